package chaos

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// The fault injectors need a WebSocket client that a conforming library
// cannot be: it must send close frames with reserved codes, 1-byte close
// payloads, invalid UTF-8 text and oversized frames, stop reading
// mid-stream, pace its reads byte by byte under a small receive buffer,
// and reset its socket without a close frame. Every maintained client
// (gws, gorilla, coder/websocket) refuses or hides some of these, so
// this file holds a small hand-written RFC 6455 client (masking, framing,
// fragments, ping/pong) with those levers exposed.

// WebSocket opcodes.
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

// maxReadMessage bounds what ReadMessage accepts from the server.
const maxReadMessage = 64 << 20

// HandshakeError is a refused upgrade: the server answered with an HTTP
// status instead of 101.
type HandshakeError struct {
	Status     int
	RetryAfter string
	Body       string
}

// Error implements error.
func (e *HandshakeError) Error() string {
	return fmt.Sprintf("websocket upgrade refused: HTTP %d %s", e.Status, strings.TrimSpace(e.Body))
}

// CloseError is a close frame received from the server. Code is 1005
// when the frame had no payload.
type CloseError struct {
	Code   uint16
	Reason string
}

// Error implements error.
func (e *CloseError) Error() string {
	return fmt.Sprintf("websocket closed by server: %d %q", e.Code, e.Reason)
}

// DialOption customises Dial.
type DialOption func(*dialConfig)

type dialConfig struct {
	rcvBuf   int
	sndBuf   int
	readRate float64 // bytes/s; 0 = unlimited
	header   http.Header
	timeout  time.Duration
}

// WithRecvBuffer sets SO_RCVBUF before connecting, so a slow reader's
// kernel buffer fills quickly and backpressure reaches the server. It
// also caps the MSS at 1200 bytes (TCP_MAXSEG): on loopback the MSS is
// 64 KiB and the server kernel's send buffer, which autotunes from it,
// would absorb megabytes before wsd saw any backpressure; a WAN-sized
// segment keeps that buffer near what a real slow client gets.
func WithRecvBuffer(bytes int) DialOption { return func(c *dialConfig) { c.rcvBuf = bytes } }

// WithSendBuffer sets SO_SNDBUF before connecting, so a writer blocks as
// soon as the server stops reading instead of filling megabytes of
// kernel buffer first.
func WithSendBuffer(bytes int) DialOption { return func(c *dialConfig) { c.sndBuf = bytes } }

// WithReadRate paces every read from the socket to bytesPerSec.
func WithReadRate(bytesPerSec float64) DialOption {
	return func(c *dialConfig) { c.readRate = bytesPerSec }
}

// WithHeader adds a request header to the upgrade (e.g. Origin).
func WithHeader(key, value string) DialOption {
	return func(c *dialConfig) {
		if c.header == nil {
			c.header = http.Header{}
		}
		c.header.Add(key, value)
	}
}

// WithHandshakeTimeout bounds connecting plus the upgrade (default 10s).
func WithHandshakeTimeout(d time.Duration) DialOption {
	return func(c *dialConfig) { c.timeout = d }
}

// Conn is a client WebSocket connection. Writes are safe from several
// goroutines; reads must come from one goroutine at a time.
type Conn struct {
	nc    net.Conn
	br    *bufio.Reader
	paced *pacedConn  // nil: reads are not paced
	stop  func() bool // unregisters the close-on-cancel hook
	wmu   sync.Mutex
	// autoPong answers pings, and the server's close frame, while
	// reading (default true), as a conforming client does. A silent peer
	// turns it off.
	autoPong  bool
	closeSent atomic.Bool
}

// Dial connects to rawURL (ws://host:port/path) and performs the
// upgrade. The connection lives within ctx: cancelling ctx closes it, so
// an injector stops promptly on SIGINT. A refused upgrade returns
// *HandshakeError; a connection the server closes before answering
// returns an error wrapping io.EOF or ECONNRESET.
func Dial(ctx context.Context, rawURL string, opts ...DialOption) (*Conn, error) {
	parent := ctx
	cfg := dialConfig{timeout: 10 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("dial %q: want ws://host:port/path", rawURL)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	d := net.Dialer{}
	if cfg.rcvBuf > 0 || cfg.sndBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var errs []error
			err := rc.Control(func(fd uintptr) {
				set := func(level, opt, v int) {
					errs = append(errs, syscall.SetsockoptInt(int(fd), level, opt, v))
				}
				if cfg.rcvBuf > 0 {
					set(syscall.SOL_SOCKET, syscall.SO_RCVBUF, cfg.rcvBuf)
					set(syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1200)
				}
				if cfg.sndBuf > 0 {
					set(syscall.SOL_SOCKET, syscall.SO_SNDBUF, cfg.sndBuf)
				}
			})
			return errors.Join(append(errs, err)...)
		}
	}
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.Host, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	c := &Conn{nc: nc, autoPong: true}
	var rd net.Conn = nc
	if cfg.readRate > 0 {
		c.paced = &pacedConn{Conn: nc, lim: rate.NewLimiter(rate.Limit(cfg.readRate), max(1, int(cfg.readRate/10)))}
		rd = c.paced
	}
	c.br = bufio.NewReaderSize(rd, 4096)
	if err := c.handshake(u, cfg.header); err != nil {
		_ = nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	c.stop = context.AfterFunc(parent, func() { _ = nc.Close() })
	return c, nil
}

func (c *Conn) handshake(u *url.URL, extra http.Header) error {
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	path := u.RequestURI()
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path, u.Host)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", key)
	for name, vs := range extra {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", name, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c.nc, b.String()); err != nil {
		return fmt.Errorf("send upgrade request: %w", err)
	}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return fmt.Errorf("read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		return &HandshakeError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"), Body: string(body)}
	}
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != base64.StdEncoding.EncodeToString(h[:]) {
		return fmt.Errorf("bad Sec-WebSocket-Accept %q", got)
	}
	return nil
}

// NetConn returns the underlying TCP connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// SetReadRate changes the read pace of a connection dialled with
// WithReadRate; 0 removes the limit. It has no effect on other
// connections.
func (c *Conn) SetReadRate(bytesPerSec float64) {
	if c.paced == nil {
		return
	}
	if bytesPerSec <= 0 {
		c.paced.lim.SetBurst(64 << 10)
		c.paced.lim.SetLimit(rate.Inf)
		return
	}
	c.paced.lim.SetLimit(rate.Limit(bytesPerSec))
}

// SetAutoPong turns automatic replies (pong to a ping, close to the
// server's close) on or off.
func (c *Conn) SetAutoPong(on bool) { c.autoPong = on }

// WriteMessage sends one unfragmented data message.
func (c *Conn) WriteMessage(opcode byte, payload []byte) error {
	return c.WriteFrame(true, opcode, payload)
}

// WriteClose sends a close frame with code and reason.
func (c *Conn) WriteClose(code uint16, reason string) error {
	p := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(p, code)
	copy(p[2:], reason)
	return c.WriteFrame(true, OpClose, p)
}

// WriteFrame sends one masked frame with any opcode and payload, valid or
// not.
func (c *Conn) WriteFrame(fin bool, opcode byte, payload []byte) error {
	hdr := make([]byte, 0, 14)
	b0 := opcode & 0x0F
	if fin {
		b0 |= 0x80
	}
	hdr = append(hdr, b0)
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xFFFF:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	frame := make([]byte, len(hdr)+len(payload))
	copy(frame, hdr)
	for i, b := range payload {
		frame[len(hdr)+i] = b ^ mask[i&3]
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if opcode == OpClose {
		c.closeSent.Store(true)
	}
	if _, err := c.nc.Write(frame); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// ReadMessage returns the next data message (fragments joined). Pings
// are answered (unless auto-pong is off) and pongs skipped. A close frame
// returns *CloseError; the caller then closes the connection.
func (c *Conn) ReadMessage() (opcode byte, payload []byte, err error) {
	var msg []byte
	var msgOp byte
	for {
		fin, op, p, err := c.readFrame()
		if err != nil {
			return 0, nil, err
		}
		switch op {
		case OpPing:
			if c.autoPong {
				if err := c.WriteFrame(true, OpPong, p); err != nil {
					return 0, nil, err
				}
			}
			continue
		case OpPong:
			continue
		case OpClose:
			ce := &CloseError{Code: 1005}
			if len(p) >= 2 {
				ce.Code = binary.BigEndian.Uint16(p)
				ce.Reason = string(p[2:])
			}
			// RFC 6455 §5.5.1: answer the server's close (echoing its
			// code) unless we started the closing handshake, so the server
			// can finish without waiting for a timeout.
			if c.autoPong && !c.closeSent.Load() {
				var echo []byte
				if len(p) >= 2 {
					echo = p[:2]
				}
				_ = c.WriteFrame(true, OpClose, echo)
			}
			return 0, nil, ce
		case OpContinuation:
			if msgOp == 0 {
				return 0, nil, errors.New("continuation frame without a message")
			}
		default:
			msgOp = op
		}
		if len(msg)+len(p) > maxReadMessage {
			return 0, nil, fmt.Errorf("message over %d bytes", maxReadMessage)
		}
		msg = append(msg, p...)
		if fin {
			return msgOp, msg, nil
		}
	}
}

func (c *Conn) readFrame() (fin bool, op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return false, 0, nil, err
	}
	fin, op = h[0]&0x80 != 0, h[0]&0x0F
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return false, 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return false, 0, nil, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if n > maxReadMessage {
		return false, 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(c.br, mask[:]); err != nil {
			return false, 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return false, 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= mask[i&3]
		}
	}
	return fin, op, payload, nil
}

// ReadUntilClose reads and discards messages until the server's close
// frame or the connection's end, within timeout. It returns the close
// code (0 when the connection ended without a close frame), how many
// data messages it read, and the error that ended it when not a close.
func (c *Conn) ReadUntilClose(timeout time.Duration) (code uint16, msgs int, err error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.nc.SetReadDeadline(time.Time{}) }()
	for {
		_, _, err := c.ReadMessage()
		var ce *CloseError
		switch {
		case errors.As(err, &ce):
			return ce.Code, msgs, nil
		case err != nil:
			return 0, msgs, err
		}
		msgs++
	}
}

// Close closes the socket (a FIN, no close frame).
func (c *Conn) Close() error {
	c.release()
	return c.nc.Close()
}

func (c *Conn) release() {
	if c.stop != nil {
		c.stop()
	}
}

// CloseGracefully sends close 1000 and waits briefly for the server's
// close frame before closing the socket.
func (c *Conn) CloseGracefully(wait time.Duration) error {
	err := c.WriteClose(1000, "")
	if err == nil {
		_, _, _ = c.ReadUntilClose(wait)
	}
	return errors.Join(err, c.Close())
}

// Abort resets the connection: SO_LINGER 0 makes close send an RST, the
// abrupt end of a crashed client or a dropped NAT entry.
func (c *Conn) Abort() error {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}

// pacedConn limits the byte rate of reads (a slow consumer).
type pacedConn struct {
	net.Conn
	lim *rate.Limiter
}

// Read reads at most a burst of bytes once the limiter allows them.
func (p *pacedConn) Read(b []byte) (int, error) {
	if burst := p.lim.Burst(); len(b) > burst {
		b = b[:burst]
	}
	if err := p.lim.WaitN(context.Background(), len(b)); err != nil {
		return 0, err
	}
	return p.Conn.Read(b)
}
