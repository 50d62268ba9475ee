package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The WebSocket clients and polling are in internal/wstest. The service
// configuration below mirrors service's testConfig (service's tests
// cannot share a helper that imports service: an import cycle).

// serviceConfig is the service configuration scaled down for tests.
func serviceConfig() service.Config {
	c := service.DefaultConfig()
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

// fixture is a running server observed by a Telemetry whose spans go to
// a tracetest recorder, metrics to a ManualReader and logs to a buffer.
type fixture struct {
	tel    *Telemetry
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	srv    *service.Server
	logs   *wstest.SyncBuffer
	stop   func() error
}

type fixtureOpts struct {
	svc  func(*service.Config)
	tel  func(*Config)
	opts []Option // replace the recorder-backed providers when set
}

func start(t testing.TB, fo fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader(), logs: &wstest.SyncBuffer{}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(f.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(f.reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	tcfg := DefaultConfig()
	if fo.tel != nil {
		fo.tel(&tcfg)
	}
	opts := fo.opts
	if opts == nil {
		opts = []Option{WithTracerProvider(tp), WithMeterProvider(mp)}
	}
	tel, err := New(context.Background(), tcfg, opts...)
	if err != nil {
		t.Fatalf("telemetry.New: %v", err)
	}
	f.tel = tel
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(f.logs.String(), "\n")
			t.Logf("server log (last lines):\n%s", strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})

	scfg := serviceConfig()
	if fo.svc != nil {
		fo.svc(&scfg)
	}
	logger := slog.New(tel.LogHandler(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	sopts := []service.Option{service.WithObserver(tel), service.WithLogger(logger)}
	if h := tel.MetricsHandler(); h != nil {
		sopts = append(sopts, service.WithAdminHandler("/metrics", h))
	}
	srv, err := service.New(scfg, sopts...)
	if err != nil {
		t.Fatalf("service.New: %v", err)
	}
	if err := tel.Watch(srv); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	f.srv = srv
	f.stop = wstest.Serve(t, srv.Serve, srv.Ready())
	return f
}

func (f *fixture) wsURL(path string) string { return "ws://" + f.srv.Addr().String() + path }
func (f *fixture) adminURL(path string) string {
	return "http://" + f.srv.AdminAddr().String() + path
}

// waitIdle waits until every session has ended.
func (f *fixture) waitIdle(t testing.TB) {
	t.Helper()
	wstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if l := f.srv.Load(); l != (service.Load{}) {
			return fmt.Errorf("not idle: %+v", l)
		}
		return nil
	})
}

// endedSpans returns the ended spans named name.
func (f *fixture) endedSpans(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range f.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// collect reads the metrics now.
func (f *fixture) collect(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := f.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	return rm
}

// findMetric returns the metric named name, or false.
func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// matches reports whether set holds every attribute of want.
func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// intValue sums the int64 sum data points of metric name whose
// attributes include want; false if the metric is absent.
func intValue(rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (int64, bool) {
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, false
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		return 0, false
	}
	var n int64
	for _, dp := range sum.DataPoints {
		if matches(dp.Attributes, want) {
			n += dp.Value
		}
	}
	return n, true
}

// histCount returns the number of recordings and their sum for the data
// points of histogram name whose attributes include want.
func histCount[N int64 | float64](rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (uint64, N) {
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, 0
	}
	h, ok := m.Data.(metricdata.Histogram[N])
	if !ok {
		return 0, 0
	}
	var count uint64
	var sum N
	for _, dp := range h.DataPoints {
		if matches(dp.Attributes, want) {
			count += dp.Count
			sum += dp.Sum
		}
	}
	return count, sum
}

// upgradeStatus sends an upgrade request with header to url and returns
// the response status (the connection is closed at cleanup).
func upgradeStatus(t testing.TB, url string, header http.Header) int {
	t.Helper()
	c, resp, err := wstest.DialRaw(url, wstest.WithHeader(header))
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return resp.StatusCode
}

// echoSession opens a session on url with header, echoes payload n times
// (counting each in completed when it is not nil) and ends with a close
// handshake, 1000 "bye". It reports failures instead of ending the test,
// so other goroutines than the test's may call it.
func echoSession(url string, header http.Header, payload []byte, n int, completed *atomic.Int64) error {
	c, resp, err := wstest.DialRaw(url, wstest.WithHeader(header))
	if err != nil {
		return err
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("upgrade status %d", resp.StatusCode)
	}
	for range n {
		if err := c.Echo(payload); err != nil {
			return err
		}
		if completed != nil {
			completed.Add(1)
		}
	}
	_, err = c.CloseHandshake(1000, "bye")
	return err
}

// slowSubscriber joins topic with a subscriber that reads only when the
// test says, and a publisher, and waits until both are registered. The
// subscriber's receive buffer is a fixed 256 KiB: no autotuning to tens
// of MiB, and still above the loopback MSS (a tinier window makes
// draining crawl on delayed ACKs).
func (f *fixture) slowSubscriber(t *testing.T, topic string) (sub, pub *wstest.Conn) {
	t.Helper()
	sub = wstest.MustDialRaw(t, f.wsURL("/ws/topics/"+topic), wstest.WithReadBuffer(256<<10))
	pub = wstest.MustDialRaw(t, f.wsURL("/ws/topics/"+topic))
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := f.srv.Load().TopicConnections; n != 2 {
			return fmt.Errorf("%d topic connections", n)
		}
		return nil
	})
	return sub, pub
}
