package main

import (
	"context"
	"encoding/json"
	"image/png"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/lxzan/gws"
)

func TestParseSources(t *testing.T) {
	got, err := parseSources("127.0.0.2-127.0.0.4, 127.0.0.9")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i, w := range want {
		if got[i] != netip.MustParseAddr(w) {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for _, bad := range []string{"", "nope", "127.0.0.5-127.0.0.2", "127.0.0.1-::1", "10.0.0.0-10.0.255.255"} {
		if _, err := parseSources(bad); err == nil {
			t.Errorf("parseSources(%q) accepted", bad)
		}
	}
}

func TestParseProc(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := []byte("4242 (my (odd) srv) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 9 0 123 456 789")
	cpu, err := parseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3800 * time.Millisecond; cpu != want { // (250+130) ticks at 100 Hz
		t.Fatalf("cpu = %v, want %v", cpu, want)
	}
	if _, err := parseStatCPU([]byte("4242 (srv) S 1 2")); err == nil {
		t.Fatal("short stat accepted")
	}
	rss, err := parseStatmRSS([]byte("1000 300 20 1 0 50 0\n"), 4096)
	if err != nil || rss != 300*4096 {
		t.Fatalf("rss = %d, %v; want %d", rss, err, 300*4096)
	}
	if _, err := parseStatmRSS([]byte("1000"), 4096); err == nil {
		t.Fatal("short statm accepted")
	}
	// The live process: CPU and RSS are positive.
	s, err := sampleProc(os.Getpid())
	if err != nil || s.rss <= 0 {
		t.Fatalf("sampleProc(self) = %+v, %v", s, err)
	}
}

func TestParseMemStats(t *testing.T) {
	doc := "heap profile: 1: 2 [3: 4] @ heap/1048576\n# runtime.MemStats\n# HeapInuse = 104931328\n# Stack = 41385984 / 41385984\n"
	stack, heap, err := parseMemStats(doc)
	if err != nil || stack != 41385984 || heap != 104931328 {
		t.Fatalf("parseMemStats = %d, %d, %v", stack, heap, err)
	}
	if _, _, err := parseMemStats("# HeapInuse = 1\n"); err == nil {
		t.Fatal("profile without Stack accepted")
	}
}

func TestSummarize(t *testing.T) {
	h := hdrhistogram.New(histMinUS, histMaxUS, histSig)
	for v := int64(1); v <= 1000; v++ {
		_ = h.RecordValue(v)
	}
	l := summarize(h)
	if l.Count != 1000 || l.Max != 1000 {
		t.Fatalf("count %d max %v", l.Count, l.Max)
	}
	for _, c := range []struct{ got, want float64 }{{l.P50, 500}, {l.P90, 900}, {l.P99, 990}, {l.P999, 999}} {
		if math.Abs(c.got-c.want) > c.want*0.002 {
			t.Errorf("percentile %v, want %v", c.got, c.want)
		}
	}
	if len(l.Curve) == 0 || l.Curve[len(l.Curve)-1].Y != 1000 {
		t.Fatalf("curve %v", l.Curve)
	}
	if e := summarize(hdrhistogram.New(histMinUS, histMaxUS, histSig)); e.Count != 0 || e.Curve != nil {
		t.Fatalf("empty histogram summary %+v", e)
	}
}

func TestRecorderOnlyInWindow(t *testing.T) {
	r := newLatencyRecorder()
	r.record(3, time.Millisecond)
	r.on.Store(true)
	r.record(3, 2*time.Millisecond)
	r.record(40, time.Hour) // clamped to the histogram's range
	if got := r.merged().TotalCount(); got != 2 {
		t.Fatalf("recorded %d values, want 2 (the one outside the window is ignored)", got)
	}
}

func TestStampRoundTrip(t *testing.T) {
	p := make([]byte, 16)
	now := time.Now()
	stamp(p, now)
	got, ok := stampOf(p)
	if !ok || !got.Equal(time.Unix(0, now.UnixNano())) {
		t.Fatalf("stampOf = %v, %v; want %v", got, ok, now)
	}
	if _, ok := stampOf(p[:4]); ok {
		t.Fatal("short payload accepted")
	}
}

// A refused upgrade (an admission cap sized too low) must fail the run
// with the HTTP status, not hang or report zeros.
func TestDialAllReportsRefusal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "too many", http.StatusTooManyRequests)
	}))
	defer srv.Close()
	o := dialOptions{url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws/echo",
		sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, concurrency: 4}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := dialAll(ctx, o, 8, func(int) gws.Event { return baseEvent{} })
	if err == nil || !strings.Contains(err.Error(), "429") {
		t.Fatalf("err = %v, want one naming HTTP 429", err)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	ctx := context.Background()
	if _, err := runEcho(ctx, echoConfig{conns: 1, inflight: 1, size: 4}); err == nil {
		t.Error("echo with a 4-byte payload accepted")
	}
	if _, err := runEcho(ctx, echoConfig{conns: 1, size: 64}); err == nil {
		t.Error("echo with neither in-flight nor rate accepted")
	}
	if _, err := runFanout(ctx, fanoutConfig{subs: 4, slow: 4, rate: 1, size: 64}); err == nil {
		t.Error("fan-out with only slow subscribers accepted")
	}
	if code := run(ctx, []string{"nosuchmode"}, os.Stdout, os.Stderr); code != 1 {
		t.Errorf("unknown mode: exit %d, want 1", code)
	}
	if code := run(ctx, []string{"echo", "-conns=x"}, os.Stdout, os.Stderr); code != 2 {
		t.Errorf("bad flag: exit %d, want 2", code)
	}
}

func TestCheckResultsRejectsEmptyFigures(t *testing.T) {
	r := &Results{Ratios: []Ratio{{Name: "x", Value: math.NaN()}}, Fanout: map[string]FanoutResult{"wsd": {DeliveryRatio: 0.5}}}
	err := checkResults(r)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"x: ratio NaN", "no CPU or latency", "fan-out wsd", "no GET /metrics", "no spans"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestSuiteSmoke runs the whole suite in smoke mode against freshly built
// wsd and baseline binaries: every measurement must produce figures, the
// JSON, the Markdown table and every chart.
func TestSuiteSmoke(t *testing.T) {
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	code := run(ctx, []string{"suite", "-smoke", "-pin=false", "-out", out}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("suite -smoke exited %d:\n%s", code, stderr.String())
	}
	for _, f := range []string{"results.json", "results.md", "latency_closed_loop.png", "latency_open_loop.png",
		"latency_fanout.png", "latency_isolation.png", "memory_idle.png", "memory_isolation.png"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if strings.HasSuffix(f, ".png") {
			if _, err := png.Decode(strings.NewReader(string(b))); err != nil {
				t.Errorf("%s is not a PNG: %v", f, err)
			}
		}
	}
	// The report mode re-renders the same table from results.json.
	var again strings.Builder
	if code := run(ctx, []string{"report", "-dir", out}, &again, &stderr); code != 0 {
		t.Fatalf("report exited %d:\n%s", code, stderr.String())
	}
	if again.String() != stdout.String() {
		t.Errorf("report from results.json differs from the suite's table:\n%s\n---\n%s", again.String(), stdout.String())
	}
	md := stdout.String()
	for _, row := range []string{"1. closed-loop echo throughput", "2. server CPU per echoed message", "3. extra RSS per idle connection",
		"4. fan-out p99", "5. wsd: fast subscribers' p99", "6. telemetry on / off"} {
		if !strings.Contains(md, row) {
			t.Errorf("results table lacks %q", row)
		}
	}
}

// A burst of load in one round must not decide the figure: the ratio is
// the median of the per-round ratios.
func TestPairedRatio(t *testing.T) {
	thr := func(e EchoResult) float64 { return e.Throughput }
	rounds := map[string][]EchoResult{
		"a": {{Throughput: 90}, {Throughput: 10}, {Throughput: 95}},
		"b": {{Throughput: 100}, {Throughput: 100}, {Throughput: 100}},
	}
	if got := pairedRatio(rounds, "a", "b", thr, EchoResult{}, EchoResult{}); got != 0.9 {
		t.Fatalf("paired ratio = %v, want 0.9", got)
	}
	// Without rounds: the ratio of the given results.
	if got := pairedRatio(nil, "a", "b", thr, EchoResult{Throughput: 3}, EchoResult{Throughput: 4}); got != 0.75 {
		t.Fatalf("ratio without rounds = %v, want 0.75", got)
	}
	if got := median([]int{5, 1, 4, 2}, func(v int) float64 { return float64(v) }); got != 2 {
		t.Fatalf("median = %v, want the lower middle 2", got)
	}
}

// TestClusterSmoke runs the two-replica fan-out briefly against two
// freshly built wsd replicas on an in-process NATS server: both paths
// deliver everything published, and each has latency and CPU figures.
func TestClusterSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	code := run(ctx, []string{"cluster", "-subs", "40", "-rate", "50", "-warmup", "300ms", "-duration", "2s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("cluster exited %d:\n%s", code, stderr.String())
	}
	var r ClusterResult
	if err := json.Unmarshal([]byte(stdout.String()), &r); err != nil {
		t.Fatalf("cluster output is not a ClusterResult: %v\n%s", err, stdout.String())
	}
	if r.Published == 0 {
		t.Fatalf("nothing published: %+v", r)
	}
	for name, s := range map[string]ClusterSide{"local": r.Local, "remote": r.Remote} {
		// Deliveries are counted by publish stamp, as the publishes are:
		// every message of the window reaches every subscriber once.
		// 100 messages × 20 subscribers is tens of milliseconds of CPU,
		// more than the 10 ms a /proc CPU sample resolves.
		if s.Subscribers != 20 || s.DeliveryRatio != 1 || s.Latency.Count == 0 || s.ServerCPUSeconds <= 0 || s.Closed != 0 {
			t.Errorf("%s side %+v: want 20 subscribers, delivery ratio exactly 1, latencies, CPU, none closed", name, s)
		}
	}
}
