package service

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(emfileChildEnv) != "" {
		os.Exit(emfileChild())
	}
	goleak.VerifyTestMain(m)
}

// testConfig is a configuration scaled down for tests: small buffers and
// short intervals, loopback listeners on ephemeral ports.
func testConfig() Config {
	c := DefaultConfig()
	c.Listen, c.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	c.Limits.UpgradeRate, c.Limits.UpgradeBurst = 100000, 100000
	c.Limits.MaxConnectionsPerIP = 100000
	c.Limits.MessageRate = 0
	c.Backpressure.WarnBytes = 64 << 10
	c.Backpressure.PauseBytes = 256 << 10
	c.Backpressure.ResumeBytes = 128 << 10
	c.Backpressure.MaxBytes = 512 << 10
	c.Heartbeat.PingInterval = 5 * time.Second
	c.Heartbeat.PongTimeout = 5 * time.Second
	c.Shutdown.DrainTimeout = 5 * time.Second
	return c
}

// testServer is a running Server with its observer and a way to stop it.
type testServer struct {
	*Server
	obs  *recorder
	logs *logCapture
	stop func() error // cancels Serve and returns its result
}

func (ts *testServer) wsURL(path string) string { return "ws://" + ts.Addr().String() + path }
func (ts *testServer) adminURL(path string) string {
	return "http://" + ts.AdminAddr().String() + path
}

// runServer starts a server and returns once both listeners are ready.
// It is stopped (gracefully) at the end of the test.
func runServer(t testing.TB, mutate func(*Config), opts ...Option) *testServer {
	t.Helper()
	return runServerWith(t, mutate, nil, opts...)
}

// runServerWith is runServer with prep called between New and Serve: the
// seam for tests that change unexported state (testHook, fd guard
// levels) before any goroutine reads it.
func runServerWith(t testing.TB, mutate func(*Config), prep func(*Server), opts ...Option) *testServer {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	rec := newRecorder()
	logs := &logCapture{t: t}
	srv, err := New(cfg, append([]Option{WithObserver(rec), WithLogger(slog.New(logs))}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if prep != nil {
		prep(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Serve: %v", err)
	}
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() { cancel(); result = <-done })
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve returned %v", err)
		}
		logs.finish()
	})
	return &testServer{Server: srv, obs: rec, logs: logs, stop: stop}
}

// logCapture is the server's slog handler in tests: it keeps every
// record at Info and above for assertions, and writes records to the
// test log (Debug only with -v, so a failure is not buried in noise).
// Lines logged after the test ended are dropped: t.Log would panic.
type logCapture struct {
	t     testing.TB
	attrs []slog.Attr
	root  *logCapture // holds the shared state below; nil on the root

	mu   sync.Mutex
	done bool
	recs []capturedLog
}

type capturedLog struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (h *logCapture) shared() *logCapture {
	if h.root != nil {
		return h.root
	}
	return h
}

func (h *logCapture) Enabled(_ context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || testing.Verbose()
}

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	c := capturedLog{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	var line strings.Builder
	line.WriteString(r.Level.String() + " " + r.Message)
	add := func(a slog.Attr) bool {
		c.attrs[a.Key] = a.Value.String()
		line.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	root := h.shared()
	root.mu.Lock()
	defer root.mu.Unlock()
	if root.done {
		return nil
	}
	root.recs = append(root.recs, c)
	root.t.Log(line.String())
	return nil
}

func (h *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCapture{t: h.t, root: h.shared(), attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

// WithGroup flattens: the service logs no groups.
func (h *logCapture) WithGroup(string) slog.Handler { return h }

func (h *logCapture) finish() {
	h.mu.Lock()
	h.done = true
	h.mu.Unlock()
}

// find returns the captured records at level with msg whose attributes
// include every key=value of want.
func (h *logCapture) find(level slog.Level, msg string, want map[string]string) []capturedLog {
	root := h.shared()
	root.mu.Lock()
	defer root.mu.Unlock()
	var out []capturedLog
next:
	for _, r := range root.recs {
		if r.level != level || r.msg != msg {
			continue
		}
		for k, v := range want {
			if r.attrs[k] != v {
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

// checkFor polls f every `every` until it returns nil or total elapses.
func checkFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", total, err)
		}
		time.Sleep(every)
	}
}

// waitIdle waits until the server holds no session state at all.
func waitIdle(t testing.TB, ts *testServer) Stats {
	t.Helper()
	var st Stats
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		st = ts.Stats()
		if st.Connections != 0 || st.EchoConnections != 0 || st.TopicConnections != 0 || st.Paused != 0 ||
			st.BufferedBytes != 0 || st.Topics != 0 || st.Subscribers != 0 || st.IPEntries != 0 || st.Handshakes != 0 {
			return fmt.Errorf("not idle: %+v", st)
		}
		return nil
	})
	return st
}

// adminClient keeps no idle connections: goroutine and descriptor
// baselines must not include the test's own keep-alive pool.
var adminClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// fetchStats reads /debug/stats over HTTP, as the chaos suite does.
func fetchStats(t testing.TB, ts *testServer) Stats {
	t.Helper()
	resp, err := adminClient.Get(ts.adminURL("/debug/stats"))
	if err != nil {
		t.Fatalf("GET /debug/stats: %v", err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("decode stats: %v", err)
	}
	return st
}

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

// ---- a recording observer ----

type recorder struct {
	mu        sync.Mutex
	rejected  map[RejectReason]int
	events    map[BackpressureEvent]int
	closes    []CloseInfo
	received  []receivedClose
	heartbeat int
	slow      int
	dropped   int
}

type receivedClose struct {
	code  uint16
	valid bool
}

func newRecorder() *recorder {
	return &recorder{rejected: map[RejectReason]int{}, events: map[BackpressureEvent]int{}}
}

func (r *recorder) SessionOpened(ctx context.Context, _ SessionInfo) (context.Context, SessionObserver) {
	return ctx, r
}
func (r *recorder) UpgradeRejected(_ context.Context, _ *http.Request, reason RejectReason) {
	r.mu.Lock()
	r.rejected[reason]++
	r.mu.Unlock()
}
func (r *recorder) AcceptError(string)     {}
func (r *recorder) MessageReceived(int)    {}
func (r *recorder) MessageSent(int, int64) {}
func (r *recorder) Backpressure(ev BackpressureEvent, _ int64) {
	r.mu.Lock()
	r.events[ev]++
	r.mu.Unlock()
}
func (r *recorder) Dropped(n int) { r.mu.Lock(); r.dropped += n; r.mu.Unlock() }
func (r *recorder) SlowConsumer(int64) {
	r.mu.Lock()
	r.slow++
	r.mu.Unlock()
}
func (r *recorder) HeartbeatTimeout() { r.mu.Lock(); r.heartbeat++; r.mu.Unlock() }
func (r *recorder) CloseReceived(code uint16, valid bool) {
	r.mu.Lock()
	r.received = append(r.received, receivedClose{code, valid})
	r.mu.Unlock()
}
func (r *recorder) Closed(info CloseInfo) {
	r.mu.Lock()
	r.closes = append(r.closes, info)
	r.mu.Unlock()
}

func (r *recorder) snapshot() *recorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp := &recorder{heartbeat: r.heartbeat, slow: r.slow, dropped: r.dropped,
		rejected: map[RejectReason]int{}, events: map[BackpressureEvent]int{}}
	for k, v := range r.rejected {
		cp.rejected[k] = v
	}
	for k, v := range r.events {
		cp.events[k] = v
	}
	cp.closes = append(cp.closes, r.closes...)
	cp.received = append(cp.received, r.received...)
	return cp
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// expectClose checks that the observer saw a session end as described.
func expectClose(ts *testServer, code uint16, reason string, initiator Initiator) error {
	snap := ts.obs.snapshot()
	for _, c := range snap.closes {
		if c.Code == code && c.Reason == reason && c.Initiator == initiator {
			return nil
		}
	}
	return fmt.Errorf("no close %d %q %s among %+v", code, reason, initiator, snap.closes)
}

// smallSendBuffer is a prep for runServerWith: it pins the kernel send
// buffer of every session that sends a message to 4 KiB (no
// autotuning), so a peer that does not read blocks the server's writes
// after a few KiB instead of several MiB, and a pause is reached at once
// and stays.
func smallSendBuffer(s *Server) {
	s.testHook = func(ss *session, _ *gws.Message) {
		if tc, ok := ss.nc.(*trackedConn); ok {
			if c, ok := tc.Conn.(*net.TCPConn); ok {
				_ = c.SetWriteBuffer(4096)
			}
		}
	}
}

// sessionOfClient returns the server's session for the client end c.
func sessionOfClient(ts *testServer, c net.Conn) *session {
	var found *session
	ts.sessions.each(nil, func(s *session) {
		if s.remote.String() == c.LocalAddr().String() {
			found = s
		}
	})
	return found
}
