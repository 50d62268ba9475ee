package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// TestAdminHealthAndReadiness: /healthz and /readyz answer 200 with a
// short body while serving; unknown paths are 404; only GET is served.
func TestAdminHealthAndReadiness(t *testing.T) {
	ts := runServer(t, nil)
	for _, tt := range []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"GET", "/readyz", 200, "ready\n"},
		{"POST", "/healthz", 405, ""},
		{"GET", "/nope", 404, ""},
		{"GET", "/debug/pprof/", 404, ""}, // admin.pprof is off by default
	} {
		req, _ := http.NewRequest(tt.method, ts.adminURL(tt.path), nil)
		resp, err := adminClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || (tt.body != "" && string(body) != tt.body) {
			t.Fatalf("%s %s: %d %q, want %d %q", tt.method, tt.path, resp.StatusCode, body, tt.status, tt.body)
		}
	}
}

// statsKeys is the documented /debug/stats document (README table).
var statsKeys = []string{
	"buffered_bytes", "bus_connected", "bus_dropped_total", "bus_published_total", "bus_received_total",
	"bus_subscriptions", "connections", "draining", "dropped_total", "echo_connections", "evicted_total",
	"fd_limit", "frame_timeouts_total", "goroutines", "handshakes", "heartbeat_timeouts_total", "ip_entries",
	"open_fds", "panics_total", "paused", "refused_at_accept_total", "shed_total", "subscribers",
	"topic_connections", "topics", "user_entries", "write_timeouts_total",
}

// TestAdminStatsExact: /debug/stats has exactly the documented fields,
// and each is exact for a known load: two echo connections (one paused
// with a known backlog), three subscribers on two topics.
func TestAdminStatsExact(t *testing.T) {
	ts := runServerWith(t, func(c *Config) { c.Backpressure.MaxPaused = 10 * time.Minute }, smallSendBuffer)

	resp, err := adminClient.Get(ts.adminURL("/debug/stats"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("stats: %v, content type %q", err, resp.Header.Get("Content-Type"))
	}
	var keys []string
	for k := range doc {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, statsKeys) {
		t.Fatalf("stats keys %v, want %v", keys, statsKeys)
	}
	idle := fetchStats(t, ts)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if idle.FDLimit != int64(rl.Cur) || idle.Connections != 0 || idle.Goroutines <= 0 || idle.Draining || !idle.BusConnected {
		t.Fatalf("idle stats %+v, want fd_limit %d, bus_connected (local bus) and nothing else", idle, rl.Cur)
	}

	wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	flooder := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), wstest.WithReadBuffer(4096))
	for _, topic := range []string{"a", "a", "b"} {
		wstest.MustDialRaw(t, ts.wsURL("/ws/topics/"+topic))
	}
	flood(flooder)
	// Wait until the flooder is paused and its backlog stable: nothing
	// is read while paused and its socket is full.
	// (Sessions register just after their 101, so this polls too.)
	var st Stats
	var want int64
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		ss := sessionOfClient(ts, flooder.Conn)
		if ss == nil || !ss.buf.isPaused() {
			return errors.New("flooder not paused")
		}
		want = ss.buf.buffered()
		st = fetchStats(t, ts)
		exp := Stats{
			Connections: 5, EchoConnections: 2, TopicConnections: 3, Paused: 1, BufferedBytes: want,
			FDLimit: int64(rl.Cur), Topics: 2, Subscribers: 3, IPEntries: 1,
			// The local bus: no broker link to lose, nothing counted.
			BusConnected: true,
			// Compared separately:
			OpenFDs: st.OpenFDs, Goroutines: st.Goroutines,
		}
		if st != exp {
			return fmt.Errorf("stats\n%+v, want\n%+v", st, exp)
		}
		return nil
	})
	n, _ := countOpenFDs()
	// Paused means the buffer reached pause_bytes and has not drained
	// below resume_bytes since.
	if want < ts.cfg.Backpressure.ResumeBytes {
		t.Fatalf("paused with %d buffered, below resume_bytes", want)
	}
	// open_fds counts the stats request's two sockets (client and
	// server side, both in this process) on top of what is open now.
	if st.OpenFDs < int64(n) || st.OpenFDs > int64(n)+3 {
		t.Fatalf("open_fds %d, /proc/self/fd has %d", st.OpenFDs, n)
	}
	if g := runtime.NumGoroutine(); st.Goroutines < g/2 || st.Goroutines > 2*g {
		t.Fatalf("goroutines %d, runtime says %d", st.Goroutines, g)
	}
}
