package wstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer echoes every data message; a text message "bye" is
// answered with a ping and a 1001 close frame instead.
type echoServer struct{ gws.BuiltinEventHandler }

func (echoServer) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	if m.Opcode == gws.OpcodeText && m.Data.String() == "bye" {
		_ = c.WritePing([]byte("p"))
		_ = c.WriteClose(1001, []byte("going away"))
		return
	}
	_ = c.WriteMessage(m.Opcode, m.Bytes())
}

// startEcho serves echoServer on loopback and returns its ws:// URL.
// Origin "https://evil.example" is refused with 403.
func startEcho(t *testing.T) string {
	t.Helper()
	up := gws.NewUpgrader(echoServer{}, &gws.ServerOption{})
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") == "https://evil.example" {
			http.Error(w, "origin", http.StatusForbidden)
			return
		}
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() { defer wg.Done(); c.ReadLoop() }()
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/echo"
}

// TestRawConnFrames: the raw client's frames are what a real server
// (gws) accepts, for every payload length encoding, fragmented and
// unfragmented, and it reads the server's frames and close handshake.
func TestRawConnFrames(t *testing.T) {
	c := MustDialRaw(t, startEcho(t), WithReadBuffer(64<<10), WithHeader(http.Header{"Origin": {"https://ok.example"}}))
	for _, n := range []int{0, 125, 126, 65535, 65536, 200000} {
		payload := bytes.Repeat([]byte{byte(n)}, n)
		if err := c.Echo(payload); err != nil {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
	}
	if err := c.WriteFragment(false, OpText, []byte("hel")); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFragment(true, OpContinuation, []byte("lo")); err != nil {
		t.Fatal(err)
	}
	if f, err := c.ReadFrame(10 * time.Second); err != nil || f.Opcode != OpText || string(f.Payload) != "hello" {
		t.Fatalf("fragmented echo: %+v %v, want text hello", f, err)
	}
	if f := (Frame{Opcode: OpText, Payload: []byte{3, 232}}); f.CloseCode() != 0 {
		t.Fatalf("close code %d of a text frame, want 0", f.CloseCode())
	}
	// "bye": the server pings, then closes with 1001.
	if err := c.WriteFrame(OpText, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	if f, err := c.ReadFrame(10 * time.Second); err != nil || f.Opcode != OpPing {
		t.Fatalf("got %+v %v, want a ping", f, err)
	}
	if code, err := c.ReadUntilClose(10 * time.Second); err != nil || code != 1001 {
		t.Fatalf("close %d %v, want 1001", code, err)
	}
}

// TestCloseHandshake: the server answers the client's close frame.
func TestCloseHandshake(t *testing.T) {
	c := MustDialRaw(t, startEcho(t))
	if code, err := c.CloseHandshake(1000, "done"); err != nil || code != 1000 {
		t.Fatalf("close handshake: %d %v, want 1000", code, err)
	}
	if _, err := c.ReadUntilClose(10 * time.Second); err == nil {
		t.Fatal("a second close frame after the handshake")
	}
}

// TestDialRawRefused: a refused upgrade is a response, not an error.
func TestDialRawRefused(t *testing.T) {
	c, resp, err := DialRaw(startEcho(t), WithHeader(http.Header{"Origin": {"https://evil.example"}}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %s, want 403", resp.Status)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("the refused connection is still open")
	}
	if _, _, err := DialRaw("ws://127.0.0.1:1/x"); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

// TestDialGWSRecords: the gws client records messages in order, answers
// and counts pings, and reports the server's close code.
func TestDialGWSRecords(t *testing.T) {
	conn, c := DialGWS(t, startEcho(t), true)
	for i := range 3 {
		if err := conn.WriteMessage(gws.OpcodeBinary, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := c.Count(); n != 3 {
			return fmt.Errorf("%d messages", n)
		}
		return nil
	})
	if err := conn.WriteString("bye"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("not closed")
	}
	var ce *gws.CloseError
	if c.CloseCode() != 1001 || !errors.As(c.Err(), &ce) || c.Pings() != 1 {
		t.Fatalf("close %d err %v pings %d, want 1001 and 1 ping", c.CloseCode(), c.Err(), c.Pings())
	}
	for i, m := range c.Messages() {
		if len(m) != 1 || int(m[0]) != i {
			t.Fatalf("message %d is %v", i, m)
		}
	}
}

// fakeTB records failures instead of ending the test.
type fakeTB struct {
	testing.TB
	cleanups []func()
	mu       sync.Mutex
	failures []string
}

func (f *fakeTB) Helper()                   {}
func (f *fakeTB) Cleanup(fn func())         { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Errorf(s string, a ...any) { f.Fatalf(s, a...) }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
}

// TestCheckFor: it returns once f holds, and fails with f's last error
// after total.
func TestCheckFor(t *testing.T) {
	calls := 0
	CheckFor(t, 10*time.Second, time.Millisecond, func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Fatalf("%d calls, want 3", calls)
	}
	ft := &fakeTB{TB: t}
	CheckFor(ft, 20*time.Millisecond, time.Millisecond, func() error { return errors.New("never") })
	if len(ft.failures) != 1 || !strings.Contains(ft.failures[0], "never") {
		t.Fatalf("failures %q, want one with the last error", ft.failures)
	}
}

// TestServe: stop returns Serve's result, the same on every call; an
// error from Serve fails the test at cleanup; a Serve that ends before
// it is ready fails the test.
func TestServe(t *testing.T) {
	ready := make(chan struct{})
	wantErr := errors.New("stopped")
	ft := &fakeTB{TB: t}
	stop := Serve(ft, func(ctx context.Context) error {
		close(ready)
		<-ctx.Done()
		return wantErr
	}, ready)
	if err := stop(); err != wantErr {
		t.Fatalf("stop: %v, want %v", err, wantErr)
	}
	if err := stop(); err != wantErr {
		t.Fatalf("second stop: %v, want %v", err, wantErr)
	}
	if len(ft.cleanups) != 1 || len(ft.failures) != 0 {
		t.Fatalf("%d cleanups, failures %q before cleanup; want 1 and none", len(ft.cleanups), ft.failures)
	}
	ft.cleanups[0]()
	if len(ft.failures) != 1 || !strings.Contains(ft.failures[0], "stopped") {
		t.Fatalf("failures %q after cleanup, want Serve's error", ft.failures)
	}

	ft = &fakeTB{TB: t}
	Serve(ft, func(context.Context) error { return errors.New("no listener") }, make(chan struct{}))
	if len(ft.failures) != 1 || !strings.Contains(ft.failures[0], "no listener") {
		t.Fatalf("failures %q, want the early return", ft.failures)
	}
}

// TestSyncBuffer: concurrent writes are all kept.
func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				_, _ = b.Write([]byte("x\n"))
			}
		}()
	}
	wg.Wait()
	if n := strings.Count(b.String(), "x\n"); n != 800 {
		t.Fatalf("%d lines, want 800", n)
	}
}
