package wstest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Opcodes of RFC 6455 §5.2 that tests write and read.
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

// ioTimeout bounds the upgrade exchange and each read that Echo and
// CloseHandshake wait for: generous, because the machine running the
// tests may be loaded.
const ioTimeout = 10 * time.Second

// Conn is a hand-rolled WebSocket client over a plain TCP connection.
// Tests use it to send what a well-behaved library never would (bad
// close codes, invalid UTF-8, unmasked or fragmented control frames) and
// to choose when to read at all (a slow or stuck consumer). It is not
// safe for concurrent writers, nor for concurrent readers.
//
// Create it with DialRaw or MustDialRaw; the zero value is not
// connected.
type Conn struct {
	net.Conn // the TCP connection: close it, or reset it (SetLinger 0)
	br       *bufio.Reader
}

// dialConfig is what the DialOptions set.
type dialConfig struct {
	dialer *net.Dialer
	rcvbuf int
	header http.Header
}

// A DialOption changes how DialRaw connects; it must not be nil.
type DialOption func(*dialConfig)

// WithReadBuffer sets the socket's receive buffer to n bytes (which also
// stops the kernel from growing it): a client that does not read then
// fills up after about n bytes, like a slow consumer. n <= 0 keeps the
// default.
func WithReadBuffer(n int) DialOption { return func(c *dialConfig) { c.rcvbuf = n } }

// WithHeader adds h to the upgrade request (Origin, Traceparent, ...).
func WithHeader(h http.Header) DialOption { return func(c *dialConfig) { c.header = h } }

// WithDialer dials with d instead of a dialer with a 5 s timeout: for
// instance one bound to another loopback source address.
func WithDialer(d *net.Dialer) DialOption { return func(c *dialConfig) { c.dialer = d } }

// DialRaw connects to url ("ws://host:port/path") and sends a WebSocket
// upgrade request. It returns the response with the connection; when the
// status is not 101 Switching Protocols the response body has been read
// and the connection closed, and the Conn must not be used. It fails
// when the TCP connection cannot be made or the response is not HTTP
// within 10 s.
func DialRaw(url string, opts ...DialOption) (*Conn, *http.Response, error) {
	cfg := dialConfig{dialer: &net.Dialer{Timeout: 5 * time.Second}}
	for _, o := range opts {
		o(&cfg)
	}
	host, path, _ := strings.Cut(strings.TrimPrefix(url, "ws://"), "/")
	nc, err := cfg.dialer.Dial("tcp", host)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", url, err)
	}
	if cfg.rcvbuf > 0 {
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(cfg.rcvbuf)
		}
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	var req strings.Builder
	req.WriteString("GET /" + path + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key) + "\r\n")
	for k, vs := range cfg.header {
		for _, v := range vs {
			req.WriteString(k + ": " + v + "\r\n")
		}
	}
	req.WriteString("\r\n")
	_ = nc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(nc, req.String()); err != nil {
		_ = nc.Close()
		return nil, nil, fmt.Errorf("upgrade request to %s: %w", url, err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		_ = nc.Close()
		return nil, nil, fmt.Errorf("upgrade response from %s: %w", url, err)
	}
	_ = nc.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		_ = nc.Close()
	}
	return &Conn{Conn: nc, br: br}, resp, nil
}

// MustDialRaw is DialRaw for a connection the test needs: it fails the
// test (t.Fatalf) unless the upgrade succeeds, and closes the connection
// at cleanup. Call it from the test's goroutine only.
func MustDialRaw(t testing.TB, url string, opts ...DialOption) *Conn {
	t.Helper()
	c, resp, err := DialRaw(url, opts...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("dial %s: status %s", url, resp.Status)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// WriteFrame writes one final, masked frame. It fails when the socket
// write fails.
func (c *Conn) WriteFrame(opcode byte, payload []byte) error {
	return c.WriteFragment(true, opcode, payload)
}

// WriteFragment writes one masked frame; fin false starts (opcode
// OpText or OpBinary) or continues (OpContinuation) a fragmented
// message. It fails when the socket write fails.
func (c *Conn) WriteFragment(fin bool, opcode byte, payload []byte) error {
	_, err := c.Write(AppendFrame(nil, fin, opcode, payload))
	return err
}

// AppendFrame appends one masked client frame to dst and returns it:
// opcode may carry RSV bits (0x40, 0x20, 0x10) to send what a library
// never would. The length takes its minimal encoding. Tests concatenate
// frames to send several in one TCP write.
func AppendFrame(dst []byte, fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	dst = append(dst, b0)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n < 1<<16:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	mask := [4]byte{1, 2, 3, 4}
	dst = append(dst, mask[:]...)
	for i, b := range payload {
		dst = append(dst, b^mask[i%4])
	}
	return dst
}

// WriteClose writes a close frame with code and reason, as they are:
// neither is checked, so a test can send invalid ones. It fails when the
// socket write fails.
func (c *Conn) WriteClose(code uint16, reason string) error {
	return c.WriteFrame(OpClose, append(binary.BigEndian.AppendUint16(nil, code), reason...))
}

// Frame is one frame received from the server. The zero value is an
// empty continuation frame.
type Frame struct {
	// Opcode is the frame's opcode (OpText, OpClose, ...).
	Opcode byte
	// Payload is the unmasked payload.
	Payload []byte
}

// CloseCode returns the status code of a close frame, or 0 for another
// frame or a close frame without a code.
func (f Frame) CloseCode() uint16 {
	if f.Opcode != OpClose || len(f.Payload) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(f.Payload)
}

// ReadFrame reads one frame within timeout. It fails on a read error
// (io.EOF once the server closed the connection, a timeout) and on a
// masked frame, which a server must never send (RFC 6455 §5.1).
func (c *Conn) ReadFrame(timeout time.Duration) (Frame, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return Frame{}, err
	}
	if h[1]&0x80 != 0 {
		return Frame{}, errors.New("masked frame from the server")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return Frame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return Frame{}, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return Frame{}, err
	}
	return Frame{Opcode: h[0] & 0x0f, Payload: p}, nil
}

// ReadUntilClose skips data and control frames until a close frame
// arrives within timeout and returns its code (0 for an empty close
// frame). It fails when the stream ends first (io.EOF: no close frame),
// on another read error and at the deadline.
func (c *Conn) ReadUntilClose(timeout time.Duration) (uint16, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := c.ReadFrame(time.Until(deadline))
		if err != nil {
			return 0, err
		}
		if f.Opcode == OpClose {
			return f.CloseCode(), nil
		}
	}
	return 0, errors.New("no close frame before the deadline")
}

// Echo sends payload as a binary message and reads frames until a binary
// one arrives, skipping control frames. It fails when that message is
// not payload, on a write or read error, and when no frame arrives within
// 10 s.
func (c *Conn) Echo(payload []byte) error {
	if err := c.WriteFrame(OpBinary, payload); err != nil {
		return err
	}
	for {
		f, err := c.ReadFrame(ioTimeout)
		if err != nil {
			return err
		}
		if f.Opcode == OpBinary {
			if !bytes.Equal(f.Payload, payload) {
				return fmt.Errorf("echo of %d bytes differs from the %d sent", len(f.Payload), len(payload))
			}
			return nil
		}
	}
}

// CloseHandshake sends a close frame with code and reason and waits up
// to 10 s for the server's close frame, whose code it returns. It fails
// on a write or read error and when the server closes the connection
// without a close frame.
func (c *Conn) CloseHandshake(code uint16, reason string) (uint16, error) {
	if err := c.WriteClose(code, reason); err != nil {
		return 0, err
	}
	return c.ReadUntilClose(ioTimeout)
}
