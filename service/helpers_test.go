package service

import (
	"context"
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

	"github.com/wsd-dev/wsd/internal/wstest"
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
	// Registered before Serve's cleanup, so it runs after the server
	// stopped: lines logged while stopping still reach the test log.
	t.Cleanup(logs.finish)
	stop := wstest.Serve(t, srv.Serve, srv.Ready())
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

// waitIdle waits until the server holds no session state at all.
//
// Its deadline is 20 s until one waitIdle of the package has failed, then
// 2 s: a bug that leaks (an entry never released) then fails every test
// that checks idleness, each within seconds and naming the counter,
// instead of adding up to the package timeout.
func waitIdle(t testing.TB, ts *testServer) Stats {
	t.Helper()
	deadline := 20 * time.Second
	if idleBroken.Load() {
		deadline = 2 * time.Second
	}
	var st Stats
	ok := false
	defer func() {
		if !ok {
			idleBroken.Store(true)
		}
	}()
	wstest.CheckFor(t, deadline, 20*time.Millisecond, func() error {
		st = ts.Stats()
		var left []string
		for _, c := range []struct {
			name string
			v    int64
		}{
			{"connections", st.Connections}, {"echo_connections", st.EchoConnections},
			{"topic_connections", st.TopicConnections}, {"paused", st.Paused}, {"buffered_bytes", st.BufferedBytes},
			{"topics", int64(st.Topics)}, {"subscribers", int64(st.Subscribers)}, {"ip_entries", int64(st.IPEntries)}, {"user_entries", int64(st.UserEntries)},
			{"handshakes", st.Handshakes},
		} {
			if c.v != 0 {
				left = append(left, fmt.Sprintf("%s=%d", c.name, c.v))
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("not idle after %s: %s, want 0", deadline, strings.Join(left, " "))
		}
		return nil
	})
	ok = true
	return st
}

// idleBroken is set once a waitIdle has failed (see waitIdle).
var idleBroken atomic.Bool

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
	auth      map[AuthFailure]int
	users     []string // SessionInfo.User of every opened session
}

type receivedClose struct {
	code  uint16
	valid bool
}

func newRecorder() *recorder {
	return &recorder{rejected: map[RejectReason]int{}, events: map[BackpressureEvent]int{}, auth: map[AuthFailure]int{}}
}

func (r *recorder) SessionOpened(ctx context.Context, info SessionInfo) (context.Context, SessionObserver) {
	r.mu.Lock()
	r.users = append(r.users, info.User)
	r.mu.Unlock()
	return ctx, r
}
func (r *recorder) AuthFailed(_ context.Context, reason AuthFailure) {
	r.mu.Lock()
	r.auth[reason]++
	r.mu.Unlock()
}
func (r *recorder) UpgradeRejected(_ context.Context, _ *http.Request, reason RejectReason) {
	r.mu.Lock()
	r.rejected[reason]++
	r.mu.Unlock()
}
func (r *recorder) AcceptError(string)       {}
func (r *recorder) MessageReceived(int)      {}
func (r *recorder) MessageQueued(int, int64) {}
func (r *recorder) MessageSent(int, int64)   {}
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
		rejected: map[RejectReason]int{}, events: map[BackpressureEvent]int{}, auth: map[AuthFailure]int{}}
	for k, v := range r.auth {
		cp.auth[k] = v
	}
	cp.users = append(cp.users, r.users...)
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

// waitStats polls the server's Stats until ok holds and returns them;
// want says what ok checks, for the failure message.
func waitStats(t testing.TB, ts *testServer, want string, ok func(Stats) bool) Stats {
	t.Helper()
	var st Stats
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st = ts.Stats(); !ok(st) {
			return fmt.Errorf("stats %+v, want %s", st, want)
		}
		return nil
	})
	return st
}

// stopInBackground starts the graceful shutdown (cancels Serve) and
// returns a function that waits for Serve to return, failing the test
// unless it returns nil within 30 s.
func stopInBackground(t testing.TB, ts *testServer) (waitStopped func()) {
	stopped := make(chan error, 1)
	go func() { stopped <- ts.stop() }()
	return func() {
		t.Helper()
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("Serve returned %v, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Serve did not return within 30 s")
		}
	}
}

// waitUpgradeOK polls until an upgrade to url is answered 101.
func waitUpgradeOK(t testing.TB, url string) {
	t.Helper()
	wstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c, resp, err := wstest.DialRaw(url)
		if err != nil {
			return err
		}
		c.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			return fmt.Errorf("upgrade answered %s", resp.Status)
		}
		return nil
	})
}

// flood writes 16 MiB of echo requests (16 KiB frames, far above
// pause_bytes) from a client that does not read, in the background. It
// stops at the first failed write: when the server or the test closes
// the connection.
func flood(c *wstest.Conn) {
	go func() {
		payload := make([]byte, 16<<10)
		for range 1000 {
			if c.WriteFrame(wstest.OpBinary, payload) != nil {
				return
			}
		}
	}()
}

// pausedFlooder opens an echo connection with a 4 KiB receive buffer
// that floods and never reads, and waits until the server has paused
// reading from it (the only paused session).
func pausedFlooder(t testing.TB, ts *testServer) *wstest.Conn {
	t.Helper()
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), wstest.WithReadBuffer(4096))
	flood(c)
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if p := ts.Load().Paused; p != 1 {
			return fmt.Errorf("paused %d, want 1", p)
		}
		return nil
	})
	return c
}

// writeEvery writes a frame (opcode, payload) to c every `every`, at
// most maxFrames times, counting each in count, until a write fails or
// the returned stop is called; stop waits for the writer to end.
func writeEvery(c *wstest.Conn, opcode byte, payload []byte, every time.Duration, maxFrames int, count *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for range maxFrames {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if c.WriteFrame(opcode, payload) != nil {
				return
			}
			count.Add(1)
		}
	}()
	return func() { close(done); <-ended }
}
