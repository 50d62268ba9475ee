package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// fakeAdmin serves /debug/stats from st (swappable).
func fakeAdmin(t *testing.T, st *atomic.Pointer[service.Stats]) *Admin {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/stats" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(st.Load())
	}))
	t.Cleanup(srv.Close)
	a := NewAdmin(srv.URL)
	t.Cleanup(a.Close)
	return a
}

func TestCheckBaselineFailsOnALeak(t *testing.T) {
	var st atomic.Pointer[service.Stats]
	st.Store(&service.Stats{OpenFDs: 10, Goroutines: 8})
	c := NewChecker(fakeAdmin(t, &st), nil, DefaultTolerance)
	if _, err := c.Baseline(t.Context(), time.Second); err != nil {
		t.Fatal(err)
	}
	// Within tolerance: passes.
	st.Store(&service.Stats{OpenFDs: 14, Goroutines: 16})
	for _, inv := range c.CheckBaseline(t.Context(), 100*time.Millisecond) {
		if !inv.Pass {
			t.Errorf("within tolerance, %s failed: %+v", inv.Name, inv)
		}
	}
	// One descriptor, one goroutine, one session too many: each fails.
	st.Store(&service.Stats{OpenFDs: 15, Goroutines: 17, Connections: 1, Subscribers: 1, Paused: 1, BufferedBytes: 5})
	failed := map[string]bool{}
	for _, inv := range c.CheckBaseline(t.Context(), 300*time.Millisecond) {
		if !inv.Pass {
			failed[strings.Fields(inv.Name)[0]] = true
		}
	}
	for _, name := range []string{"open_fds", "goroutines", "connections", "subscribers", "paused", "buffered_bytes"} {
		if !failed[name] {
			t.Errorf("%s leak not detected (failed: %v)", name, failed)
		}
	}
}

func TestCheckBaselineWaitsForTheQuietPeriod(t *testing.T) {
	var st atomic.Pointer[service.Stats]
	st.Store(&service.Stats{OpenFDs: 10})
	c := NewChecker(fakeAdmin(t, &st), nil, DefaultTolerance)
	if _, err := c.Baseline(t.Context(), time.Second); err != nil {
		t.Fatal(err)
	}
	st.Store(&service.Stats{OpenFDs: 50, Connections: 40})
	time.AfterFunc(300*time.Millisecond, func() { st.Store(&service.Stats{OpenFDs: 10}) })
	for _, inv := range c.CheckBaseline(t.Context(), 10*time.Second) {
		if !inv.Pass {
			t.Errorf("%s: %+v", inv.Name, inv)
		}
	}
}

func TestCheckMemoryUsesThePeakSample(t *testing.T) {
	var st atomic.Pointer[service.Stats]
	st.Store(&service.Stats{})
	var mem atomic.Int64
	mem.Store(10 << 20)
	c := NewChecker(fakeAdmin(t, &st), func(context.Context) (int64, error) { return mem.Load(), nil }, DefaultTolerance)
	c.Start(t.Context(), 10*time.Millisecond)
	if err := Poll(t.Context(), 5*time.Second, 10*time.Millisecond, func() error {
		if _, peak := c.Peak(); peak < 10<<20 {
			return fmt.Errorf("peak %d", peak)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mem.Store(90 << 20)
	if err := Poll(t.Context(), 5*time.Second, 10*time.Millisecond, func() error {
		if _, peak := c.Peak(); peak < 90<<20 {
			return fmt.Errorf("peak %d", peak)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mem.Store(1 << 20) // the peak is what counts, not the last value
	series := c.Stop()
	if len(series) == 0 {
		t.Fatal("no samples")
	}
	if inv := c.CheckMemory(64 << 20); inv.Pass {
		t.Errorf("peak 90 MiB passed a 64 MiB bound: %+v", inv)
	}
	if inv := c.CheckMemory(128 << 20); !inv.Pass {
		t.Errorf("peak 90 MiB failed a 128 MiB bound: %+v", inv)
	}
}

func TestMemoryBound(t *testing.T) {
	b := service.BackpressureConfig{PauseBytes: 64 << 10, MaxBytes: 128 << 10}
	if got, want := MemoryBound(10, b, 64<<10), int64(MemoryOverhead+10*(128<<10+PerConnOverhead)); got != want {
		t.Errorf("MemoryBound = %d, want %d", got, want)
	}
	// A large message limit dominates max_bytes on the echo path.
	if got, want := MemoryBound(1, b, 1<<20), int64(MemoryOverhead+(64<<10+1<<20)+PerConnOverhead); got != want {
		t.Errorf("MemoryBound = %d, want %d", got, want)
	}
}

func TestParseMetrics(t *testing.T) {
	m := parseMetrics("# HELP x\n# TYPE x gauge\nwsd_connections{endpoint=\"echo\"} 3\nup 1\nbad line\n")
	if m[`wsd_connections{endpoint="echo"}`] != 3 || m["up"] != 1 || len(m) != 2 {
		t.Errorf("parsed %v", m)
	}
}

func TestMetricHelpers(t *testing.T) {
	m := parseMetrics(`wsd_connections_closed_total{otel_scope_name="x",ws_close_code="1000",ws_endpoint="echo"} 3
wsd_connections_closed_total{otel_scope_name="x",ws_close_code="invalid",ws_endpoint="topic"} 2
wsd_connections_active{ws_endpoint="echo"} 1
wsd_connections_active{ws_endpoint="topic"} 4
`)
	if got := SumMetric(m, "wsd_connections_closed_total", `ws_close_code="invalid"`); got != 2 {
		t.Errorf("filtered sum = %g", got)
	}
	if got := sumMetric(m, "wsd_connections_active"); got != 5 {
		t.Errorf("sum = %g", got)
	}
	if got := sumMetric(m, "wsd_messages_dropped_total"); got != 0 {
		t.Errorf("absent metric sums to %g", got)
	}
	if got := labelValues(m, "wsd_connections_closed_total", "ws_close_code"); len(got) != 2 || got[0] != "1000" || got[1] != "invalid" {
		t.Errorf("labels %v", got)
	}
	if vals := allLabelValues(m); len(vals) != 5 { // x, 1000, invalid, echo, topic
		t.Errorf("label values %v", vals)
	}
	allowed := closeCodeLabels()
	for _, v := range []string{"1000", "1002", "1006", "4000", "private", "invalid"} {
		if !allowed[v] {
			t.Errorf("%s not allowed", v)
		}
	}
	for _, v := range []string{"999", "2999", "5000", "3000"} {
		if allowed[v] {
			t.Errorf("raw client code %s allowed as a label", v)
		}
	}
}

func TestCheckMetricsCatchesDisagreementAndLeaks(t *testing.T) {
	metrics := `wsd_connections_active{ws_endpoint="echo"} 2
wsd_connections_paused 0
wsd_send_buffer_usage_bytes 0
wsd_connections_opened_total{ws_endpoint="echo"} 5
wsd_connections_closed_total{ws_close_code="999",ws_endpoint="echo"} 3
wsd_slow_consumers_evicted_total 1
wsd_messages_received_total{topic="secret-topic"} 1
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = w.Write([]byte(metrics))
			return
		}
		_ = json.NewEncoder(w).Encode(service.Stats{Connections: 0, EvictedTotal: 1})
	}))
	defer srv.Close()
	a := NewAdmin(srv.URL)
	defer a.Close()
	invs, found := NewChecker(a, nil, DefaultTolerance).CheckMetrics(t.Context(), []string{"secret-topic", "10.0.0.9"})
	if !found {
		t.Fatal("metrics not found")
	}
	failed := map[string]bool{}
	for _, inv := range invs {
		if !inv.Pass {
			failed[inv.Name] = true
		}
	}
	for _, want := range []string{
		"/metrics wsd_connections_active matches connections",
		"/metrics opened − closed matches connections",
		"/metrics close-code label bounded",
		"/metrics carries no client-chosen label value",
	} {
		if !failed[want] {
			t.Errorf("%q did not fail (failed: %v)", want, failed)
		}
	}
	if failed["/metrics wsd_slow_consumers_evicted_total matches evicted_total"] {
		t.Error("agreeing eviction counters reported as a failure")
	}
}
