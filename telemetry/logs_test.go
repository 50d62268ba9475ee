package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// recordingExporter keeps exported log records.
type recordingExporter struct {
	mu      sync.Mutex
	records []sdklog.Record
}

func (e *recordingExporter) Export(_ context.Context, rs []sdklog.Record) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range rs {
		e.records = append(e.records, r.Clone())
	}
	return nil
}
func (e *recordingExporter) Shutdown(context.Context) error   { return nil }
func (e *recordingExporter) ForceFlush(context.Context) error { return nil }

// TestLogHandlerTraceIDsAndBridge: lines logged with a span in the
// context get trace_id and span_id; with a logger provider the same
// lines, and only those the local level lets through, also go through
// the OpenTelemetry logs bridge carrying the span context.
func TestLogHandlerTraceIDsAndBridge(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	exp := &recordingExporter{}
	lp := sdklog.NewLoggerProvider(sdklog.WithProcessor(sdklog.NewSimpleProcessor(exp)))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = lp.Shutdown(context.Background())
	})
	tel, err := New(context.Background(), DefaultConfig(),
		WithTracerProvider(tp), WithMeterProvider(metricnoop.NewMeterProvider()), WithLoggerProvider(lp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })

	var buf bytes.Buffer
	logger := slog.New(tel.LogHandler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, span := tp.Tracer("test").Start(context.Background(), "session")
	logger.DebugContext(ctx, "below the level")
	logger.InfoContext(ctx, "inside", "conn_id", 7)
	logger.Info("outside")
	span.End()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
	}
	var inside, outside map[string]any
	if json.Unmarshal([]byte(lines[0]), &inside) != nil || json.Unmarshal([]byte(lines[1]), &outside) != nil {
		t.Fatalf("not JSON:\n%s", buf.String())
	}
	sc := span.SpanContext()
	if inside["trace_id"] != sc.TraceID().String() || inside["span_id"] != sc.SpanID().String() {
		t.Errorf("line inside the span: %v, want trace_id %s span_id %s", inside, sc.TraceID(), sc.SpanID())
	}
	if _, ok := outside["trace_id"]; ok {
		t.Errorf("line outside any span has a trace_id: %v", outside)
	}

	exp.mu.Lock()
	defer exp.mu.Unlock()
	if len(exp.records) != 2 {
		t.Fatalf("%d bridged records, want 2 (the debug line is below the level)", len(exp.records))
	}
	r := exp.records[0]
	if r.Body().AsString() != "inside" || r.TraceID() != sc.TraceID() || r.SpanID() != sc.SpanID() {
		t.Errorf("bridged record %q trace %s span %s, want the span's", r.Body().AsString(), r.TraceID(), r.SpanID())
	}
}
