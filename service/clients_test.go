package service

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

// ---- a raw WebSocket client: full control over frames and reading ----

// rawConn is a hand-rolled client so tests can send what a well-behaved
// library never would (bad close codes, invalid UTF-8) and choose when to
// read at all.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

// dialRaw opens a TCP connection and performs the WebSocket handshake.
// rcvbuf > 0 shrinks the socket receive buffer (a slow reader).
func dialRaw(t testing.TB, url string, rcvbuf int, header http.Header) (*rawConn, *http.Response) {
	t.Helper()
	c, resp, err := tryDialRaw(url, rcvbuf, header)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("dial %s: status %s", url, resp.Status)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, resp
}

func tryDialRaw(url string, rcvbuf int, header http.Header) (*rawConn, *http.Response, error) {
	return tryDialRawVia(&net.Dialer{Timeout: 5 * time.Second}, url, rcvbuf, header)
}

// tryDialRawVia is tryDialRaw with a chosen dialer (e.g. another
// loopback source address).
func tryDialRawVia(d *net.Dialer, url string, rcvbuf int, header http.Header) (*rawConn, *http.Response, error) {
	hostPath := strings.TrimPrefix(url, "ws://")
	host, path, _ := strings.Cut(hostPath, "/")
	nc, err := d.Dial("tcp", host)
	if err != nil {
		return nil, nil, err
	}
	if rcvbuf > 0 {
		_ = nc.(*net.TCPConn).SetReadBuffer(rcvbuf)
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	req := "GET /" + path + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key) + "\r\n"
	for k, vs := range header {
		for _, v := range vs {
			req += k + ": " + v + "\r\n"
		}
	}
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, req+"\r\n"); err != nil {
		nc.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		nc.Close()
	}
	return &rawConn{Conn: nc, br: br}, resp, nil
}

// rawHTTP sends req (a complete request) on a new connection to addr and
// returns the response with its body read.
func rawHTTP(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	return readResponse(t, bufio.NewReader(c))
}

// readResponse reads one HTTP response and its body.
func readResponse(t testing.TB, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// upgradeRequest is a valid WebSocket upgrade request for path.
func upgradeRequest(path string, extra ...string) string {
	req := "GET " + path + " HTTP/1.1\r\nHost: wsd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	return req + "\r\n"
}

// writeFrame writes one masked, final frame.
func (c *rawConn) writeFrame(opcode byte, payload []byte) error {
	return c.writeFragment(true, opcode, payload)
}

// writeFragment writes one masked frame; fin false starts or continues
// a fragmented message.
func (c *rawConn) writeFragment(fin bool, opcode byte, payload []byte) error {
	hdr := []byte{opcode}
	if fin {
		hdr[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 1<<16:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := [4]byte{1, 2, 3, 4}
	hdr = append(hdr, mask[:]...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	_, err := c.Write(append(hdr, masked...))
	return err
}

func (c *rawConn) writeClose(code uint16, reason []byte) error {
	p := binary.BigEndian.AppendUint16(nil, code)
	return c.writeFrame(0x8, append(p, reason...))
}

// frame is a server frame.
type frame struct {
	opcode  byte
	payload []byte
}

func (f frame) closeCode() uint16 {
	if f.opcode != 0x8 || len(f.payload) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(f.payload)
}

// readFrame reads one unmasked server frame.
func (c *rawConn) readFrame(timeout time.Duration) (frame, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return frame{}, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return frame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return frame{}, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return frame{}, err
	}
	return frame{opcode: h[0] & 0x0f, payload: p}, nil
}

// readUntilClose skips data and control frames until a close frame
// arrives; it returns that frame's code, or an error (EOF: no frame).
func (c *rawConn) readUntilClose(timeout time.Duration) (uint16, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := c.readFrame(time.Until(deadline))
		if err != nil {
			return 0, err
		}
		if f.opcode == 0x8 {
			return f.closeCode(), nil
		}
	}
	return 0, errors.New("no close frame before deadline")
}

// ---- a gws client ----

// gwsClient records what a well-behaved client receives.
type gwsClient struct {
	gws.BuiltinEventHandler
	mu     sync.Mutex
	msgs   [][]byte
	closed chan struct{}
	code   uint16
	err    error // what ended the read loop
	onMsg  func([]byte)
	pings  atomic.Int64
}

func (c *gwsClient) OnPing(conn *gws.Conn, p []byte) {
	c.pings.Add(1)
	_ = conn.WritePong(p)
}
func (c *gwsClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := append([]byte(nil), m.Bytes()...)
	_ = m.Close()
	c.mu.Lock()
	c.msgs = append(c.msgs, b)
	c.mu.Unlock()
	if c.onMsg != nil {
		c.onMsg(b)
	}
}
func (c *gwsClient) OnClose(_ *gws.Conn, err error) {
	c.err = err
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.code = ce.Code
	}
	close(c.closed)
}

func (c *gwsClient) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// dialGWS connects a gws client; its read loop starts only when read is
// true (a client that does not read at first calls startReading later).
func dialGWS(t testing.TB, url string, read bool) (*gws.Conn, *gwsClient) {
	t.Helper()
	h := &gwsClient{closed: make(chan struct{})}
	conn, _, err := gws.NewClient(h, &gws.ClientOption{Addr: url, ReadMaxPayloadSize: 1 << 20, CheckUtf8Enabled: true})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() {
		_ = conn.NetConn().Close()
		if read {
			<-h.closed
		}
	})
	if read {
		go conn.ReadLoop()
	}
	return conn, h
}
