package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// blackhole accepts connections and never answers: a collector that
// hangs.
func blackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// TestUnreachableCollector: with every signal exported over OTLP to a
// collector that refuses connections or accepts and never answers, the
// service keeps serving (a bounded echo workload completes) and
// Telemetry.Shutdown returns within its context's bound. Export errors
// are reported to the OpenTelemetry error handler, not swallowed.
func TestUnreachableCollector(t *testing.T) {
	for _, tc := range []struct{ name, endpoint string }{
		{"refused", "http://127.0.0.1:1"},
		{"blackhole", "http://" + blackhole(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envOTLPEndpoint, tc.endpoint)
			t.Setenv(envTracesExporter, "")
			t.Setenv(envMetricsExporter, "otlp")
			t.Setenv(envLogsExporter, "otlp")
			t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
			t.Setenv("OTEL_BLRP_SCHEDULE_DELAY", "100")
			// Exports (with their retries) to the blackhole give up after
			// 1 s, so the SDK's export goroutines, which outlive a
			// deadline-bound Shutdown, end soon after it (goleak).
			for _, k := range []string{"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_BLRP_EXPORT_TIMEOUT", "OTEL_METRIC_EXPORT_TIMEOUT"} {
				t.Setenv(k, "1000")
			}
			var exportErrs atomic.Int64
			prev := otel.GetErrorHandler()
			otel.SetErrorHandler(otel.ErrorHandlerFunc(func(error) { exportErrs.Add(1) }))
			t.Cleanup(func() { otel.SetErrorHandler(prev) })

			f := start(t, fixtureOpts{opts: []Option{}, tel: func(c *Config) { c.BatchTimeout = 50 * time.Millisecond }})
			if got := f.tel.String(); got != "traces=otlp metrics=otlp logs=otlp" {
				t.Fatalf("exporters %q", got)
			}
			const workers, sessions, echoes = 4, 10, 20
			var wg sync.WaitGroup
			var completed atomic.Int64
			errc := make(chan error, workers)
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range sessions {
						// Not MustDialRaw: t.Fatal is for the test's goroutine.
						if err := echoSession(f.wsURL("/ws/echo"), nil, []byte("payload"), echoes, &completed); err != nil {
							errc <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Fatalf("echo workload: %v", err)
			}
			if n := completed.Load(); n != workers*sessions*echoes {
				t.Fatalf("%d echoes completed, want %d", n, workers*sessions*echoes)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- f.tel.Shutdown(ctx) }()
			select {
			case err := <-done:
				// An unreachable collector makes the final flush fail: that
				// is reported, never a hang.
				if err == nil && exportErrs.Load() == 0 {
					t.Errorf("no export error reported for an unreachable collector")
				}
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					t.Logf("shutdown: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Telemetry.Shutdown did not return within 20 s with a 2 s context")
			}
			wstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				buf := make([]byte, 1<<20)
				stacks := string(buf[:runtime.Stack(buf, true)])
				for _, pkg := range []string{"otel/exporters/otlp", "otel/sdk/log.(*BatchProcessor)", "otel/sdk/trace.(*batchSpanProcessor)"} {
					if strings.Contains(stacks, pkg) {
						return fmt.Errorf("%s goroutines still running after Shutdown", pkg)
					}
				}
				return nil
			})
		})
	}
}
