// Package telemetry is wsd's OpenTelemetry instrumentation: it builds the
// tracer, meter and logger providers from the standard OTEL_* environment
// (through go.opentelemetry.io/contrib/exporters/autoexport), defines
// every instrument once, and implements service.Observer so that each
// session gets a ws.session span and each protection is counted.
//
// Defaults with no environment at all: metrics in Prometheus format
// (MetricsHandler, mounted by wsd on the admin listener at /metrics),
// traces off, logs not bridged. Nothing in this package ever blocks the
// data path on an exporter: spans go through a batch span processor that
// drops when its queue is full, metrics are aggregated in memory.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"go.opentelemetry.io/contrib/instrumentation/runtime"
	otellog "go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/metric"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/wsd-dev/wsd/service"
)

// instrumentationName is the instrumentation scope of every span, metric
// and log record wsd produces.
const instrumentationName = "github.com/wsd-dev/wsd/telemetry"

// Telemetry owns wsd's OpenTelemetry providers and instruments. It
// implements service.Observer: pass it to service.WithObserver. Create
// it with New and release it with Shutdown; the zero value is not usable.
type Telemetry struct {
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	tracer   trace.Tracer
	prop     propagation.TextMapPropagator
	inst     *instruments
	msgRatio float64 // Config.MessageSpans; 0: off
	// recordUser is Config.RecordUserID: enduser.id on session spans.
	recordUser bool
	handler    http.Handler
	logs       otellog.LoggerProvider // nil: no logs bridge
	exporters  string
	shutdown   []func(context.Context) error // providers we built, in order
}

var _ service.Observer = (*Telemetry)(nil)

// Option configures New.
type Option func(*options)

type options struct {
	tp      trace.TracerProvider
	mp      metric.MeterProvider
	lp      otellog.LoggerProvider
	prop    propagation.TextMapPropagator
	version string
}

// WithTracerProvider makes New use tp instead of building one from the
// environment (tests use an sdk/trace/tracetest recorder). New does not
// shut a given provider down.
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tp = tp } }

// WithMeterProvider makes New use mp instead of building one from the
// environment; MetricsHandler is then nil. New does not shut it down.
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.mp = mp } }

// WithLoggerProvider bridges log lines to lp (through otelslog) instead
// of building a provider from OTEL_LOGS_EXPORTER. New does not shut it
// down.
func WithLoggerProvider(lp otellog.LoggerProvider) Option { return func(o *options) { o.lp = lp } }

// WithPropagator sets how the upgrade request's trace context is read
// (default: W3C traceparent/tracestate and baggage).
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(o *options) { o.prop = p }
}

// WithServiceVersion sets the service.version resource attribute.
func WithServiceVersion(v string) Option { return func(o *options) { o.version = v } }

// New builds the providers (unless given as options), the instruments
// and the Go runtime and descriptor metrics. It reads the OTEL_*
// environment of the process (see Config.EnvOverrides). It fails when cfg
// is invalid, when an OTEL_* variable names an unknown exporter or
// protocol, or when an exporter cannot be created; it never contacts a
// collector, so an unreachable one is not an error.
func New(ctx context.Context, cfg Config, opts ...Option) (*Telemetry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("telemetry configuration: %w", err)
	}
	o := options{prop: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})}
	for _, opt := range opts {
		opt(&o)
	}
	t := &Telemetry{prop: o.prop, msgRatio: cfg.MessageSpans, recordUser: cfg.RecordUserID}
	fail := func(err error) (*Telemetry, error) {
		return nil, errors.Join(err, t.Shutdown(ctx))
	}
	b := builder{ctx: ctx, cfg: cfg, version: o.version}

	traces, metrics, logs := "given", "given", "given"
	tp, mp, lp := o.tp, o.mp, o.lp
	if sdkDisabled() {
		// OTEL_SDK_DISABLED=true: no-op providers for every signal not
		// given as an option; no /metrics.
		if tp == nil {
			tp, traces = tracenoop.NewTracerProvider(), "disabled"
		}
		if mp == nil {
			mp, metrics = noopmetric.NewMeterProvider(), "disabled"
		}
		if lp == nil {
			logs = "disabled"
		}
	}
	var err error
	if tp == nil {
		var p shutdownProvider[trace.TracerProvider]
		if p, traces, err = b.tracerProvider(); err != nil {
			return fail(err)
		}
		tp = p.provider
		t.shutdown = append(t.shutdown, p.shutdown)
	}
	if mp == nil {
		var p shutdownProvider[metric.MeterProvider]
		if p, metrics, t.handler, err = b.meterProvider(); err != nil {
			return fail(err)
		}
		mp = p.provider
		t.shutdown = append(t.shutdown, p.shutdown)
	}
	if lp == nil && logs != "disabled" {
		var p shutdownProvider[otellog.LoggerProvider]
		if p, logs, err = b.loggerProvider(); err != nil {
			return fail(err)
		}
		lp = p.provider
		if p.shutdown != nil {
			t.shutdown = append(t.shutdown, p.shutdown)
		}
	}
	t.logs = lp
	t.exporters = fmt.Sprintf("traces=%s metrics=%s logs=%s", traces, metrics, logs)
	t.tp, t.mp = tp, mp
	t.tracer = tp.Tracer(instrumentationName)

	meter := mp.Meter(instrumentationName)
	if t.inst, err = newInstruments(meter); err != nil {
		return fail(fmt.Errorf("create instruments: %w", err))
	}
	if err := registerProcessMetrics(meter, t.inst); err != nil {
		return fail(fmt.Errorf("descriptor metrics: %w", err))
	}
	if err := runtime.Start(runtime.WithMeterProvider(mp)); err != nil {
		return fail(fmt.Errorf("runtime metrics: %w", err))
	}
	return t, nil
}

// MetricsHandler serves the metrics in Prometheus text format. It is nil
// unless the metrics exporter is prometheus (the default) and New built
// the meter provider.
func (t *Telemetry) MetricsHandler() http.Handler { return t.handler }

// TracerProvider is the provider of wsd's spans, for components with
// spans of their own (natsbus). Shutdown stops it if New built it.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// MeterProvider is the provider of wsd's metrics, for components with
// instruments of their own (natsbus): they are exported with the rest.
// Shutdown stops it if New built it.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.mp }

// String describes the exporters in use, e.g.
// "traces=otlp metrics=prometheus logs=none", for the startup log line.
func (t *Telemetry) String() string { return t.exporters }

// Shutdown unregisters the load callbacks, flushes pending spans, metrics
// and log records and stops the providers New built. It returns when
// done or when ctx ends, whichever is first; the error joins every
// provider's error (an unreachable collector is reported here, once).
func (t *Telemetry) Shutdown(ctx context.Context) error {
	errs := make([]error, len(t.shutdown)+1)
	if t.inst != nil {
		errs[0] = t.inst.unregister()
	}
	// Concurrently, so that a hung traces export does not eat the
	// metrics' and logs' share of ctx.
	var wg sync.WaitGroup
	for i, f := range t.shutdown {
		wg.Go(func() { errs[i+1] = f(ctx) })
	}
	wg.Wait()
	t.shutdown = nil
	return errors.Join(errs...)
}
