package telemetry

import (
	"context"
	"net/netip"
	"syscall"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

// sdkOptions is telemetry "on": the SDK tracer (always sampling) and
// meter provider with an in-memory reader, as with the default
// Prometheus exporter (which aggregates the same way and is read only on
// scrape).
func sdkOptions(tb testing.TB) []Option {
	tp := sdktrace.NewTracerProvider()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	tb.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	return []Option{WithTracerProvider(tp), WithMeterProvider(mp)}
}

// defaultOptions is telemetry as wsd runs it with no OTEL_* environment:
// providers built by New, metrics for the Prometheus /metrics endpoint,
// traces not exported.
func defaultOptions(tb testing.TB) []Option {
	for _, k := range []string{envTracesExporter, envMetricsExporter, envLogsExporter, envOTLPEndpoint, envOTLPTraces} {
		tb.Setenv(k, "")
	}
	return []Option{}
}

// noopOptions is telemetry "off": no-op tracer and meter providers.
func noopOptions() []Option {
	return []Option{WithTracerProvider(tracenoop.NewTracerProvider()), WithMeterProvider(metricnoop.NewMeterProvider())}
}

// providerVariants are the two settings the benchmarks compare: no-op
// providers (noop) and telemetry as wsd runs it by default (otel).
var providerVariants = []struct {
	name string
	opts func(testing.TB) []Option
}{
	{"noop", func(testing.TB) []Option { return noopOptions() }},
	{"otel", defaultOptions},
}

// newSession is the observer of one session on endpoint ep, from a
// Telemetry built with opts.
func newSession(tb testing.TB, ep service.Endpoint, opts []Option) service.SessionObserver {
	tb.Helper()
	tel, err := New(context.Background(), DefaultConfig(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	_, so := tel.SessionOpened(context.Background(), service.SessionInfo{
		ID: 1, Endpoint: ep, Topic: "t", Remote: netip.MustParseAddrPort("127.0.0.1:40000"),
	})
	return so
}

// TestPerMessageNoAllocs: with the SDK providers, recording a received,
// a queued and a sent message (counters, byte counters, size and buffer
// histograms) allocates nothing: instruments and attribute sets are
// built once.
func TestPerMessageNoAllocs(t *testing.T) {
	for _, ep := range []service.Endpoint{service.EndpointEcho, service.EndpointTopic} {
		so := newSession(t, ep, sdkOptions(t))
		// First use creates the aggregation entries (the histograms
		// record one message in 8).
		for range max(sizeSampleEvery, depthSampleEvery) {
			so.MessageReceived(512)
			so.MessageQueued(512, 4096)
			so.MessageSent(512, 4096)
		}
		if allocs := testing.AllocsPerRun(1000, func() {
			so.MessageReceived(512)
			so.MessageQueued(512, 4096)
			so.MessageSent(512, 4096)
		}); allocs != 0 {
			t.Errorf("%s: %.1f allocations per message pair, want 0", ep, allocs)
		}
	}
}

// BenchmarkObserverPerMessage is the telemetry cost of one echoed
// message (one receive and one send) in isolation, as wsd runs by
// default (otel) or on no-op providers (noop).
func BenchmarkObserverPerMessage(b *testing.B) {
	for _, v := range providerVariants {
		b.Run(v.name, func(b *testing.B) {
			so := newSession(b, service.EndpointEcho, v.opts(b))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					so.MessageReceived(512)
					so.MessageQueued(512, 4096)
					so.MessageSent(512, 4096)
				}
			})
		})
	}
}

// BenchmarkEcho is the whole per-message path over a real loopback
// socket: a client sends 512 bytes and reads the echo, b.N times, with
// telemetry as wsd runs by default (otel) or on no-op providers (noop). cpu-ns/op is the
// process's CPU time (server and client, user and system) per round
// trip, the figure the README compares.
func BenchmarkEcho(b *testing.B) {
	for _, v := range providerVariants {
		b.Run(v.name, func(b *testing.B) {
			f := start(b, fixtureOpts{opts: v.opts(b)})
			c := wstest.MustDialRaw(b, f.wsURL("/ws/echo"))
			payload := make([]byte, 512)
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for b.Loop() {
				if err := c.Echo(payload); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			if _, err := c.CloseHandshake(1000, "bye"); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
