package telemetry

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/contrib/bridges/otelslog"
	"go.opentelemetry.io/otel/trace"
)

// NewLogHandler wraps next so that every record logged with a context
// holding a valid span context gets top-level trace_id and span_id
// attributes (hex, as in W3C traceparent). wsd logs every session line
// with the context SessionOpened returned, so each of them carries the
// session's IDs. Records logged under a group (WithGroup) get the IDs
// inside that group; wsd's service logger uses none.
func NewLogHandler(next slog.Handler) slog.Handler { return traceHandler{next} }

type traceHandler struct{ next slog.Handler }

func (h traceHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		// Clone: the caller may share r's attribute storage (e.g. a
		// multi-handler in front of this one).
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.next.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{h.next.WithAttrs(as)}
}
func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.next.WithGroup(name)}
}

// LogHandler returns the handler wsd should log through: next with
// trace_id and span_id added (NewLogHandler), and, when a logs exporter
// is configured (OTEL_LOGS_EXPORTER=otlp or console, or
// WithLoggerProvider), every record also sent through the OpenTelemetry
// logs bridge (otelslog), which carries the trace context natively.
func (t *Telemetry) LogHandler(next slog.Handler) slog.Handler {
	h := NewLogHandler(next)
	if t.logs == nil {
		return h
	}
	bridge := otelslog.NewHandler(instrumentationName, otelslog.WithLoggerProvider(t.logs))
	return slog.NewMultiHandler(h, levelGate{bridge, next})
}

// levelGate passes to h only the records levels decides to log, so the
// bridge exports the same lines as the local log (the bridge itself
// accepts every level).
type levelGate struct {
	slog.Handler
	levels slog.Handler
}

func (g levelGate) Enabled(ctx context.Context, l slog.Level) bool { return g.levels.Enabled(ctx, l) }

func (g levelGate) WithAttrs(as []slog.Attr) slog.Handler {
	return levelGate{g.Handler.WithAttrs(as), g.levels}
}

func (g levelGate) WithGroup(name string) slog.Handler {
	return levelGate{g.Handler.WithGroup(name), g.levels}
}
