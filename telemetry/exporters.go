package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	otellog "go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/metric"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// The environment variables New interprets itself; the rest are read by
// autoexport and the SDK.
const (
	envServiceName     = "OTEL_SERVICE_NAME"
	envTracesExporter  = "OTEL_TRACES_EXPORTER"
	envMetricsExporter = "OTEL_METRICS_EXPORTER"
	envLogsExporter    = "OTEL_LOGS_EXPORTER"
	envOTLPEndpoint    = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envOTLPTraces      = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envBSPDelay        = "OTEL_BSP_SCHEDULE_DELAY"
	envSDKDisabled     = "OTEL_SDK_DISABLED"
)

// sdkDisabled reports OTEL_SDK_DISABLED=true (case-insensitive), the
// standard switch that turns every signal into a no-op.
func sdkDisabled() bool { return strings.EqualFold(os.Getenv(envSDKDisabled), "true") }

// defaultServiceName is service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES says otherwise.
const defaultServiceName = "wsd"

// shutdownProvider is a provider New built, with its shutdown.
type shutdownProvider[P any] struct {
	provider P
	shutdown func(context.Context) error
}

// builder creates the providers; the resource is detected once, on first
// use.
type builder struct {
	ctx     context.Context
	cfg     Config
	version string

	resOnce sync.Once
	res     *resource.Resource
	resErr  error
}

// resource: service.name "wsd" and service.version, host, SDK, then the
// environment (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), which wins.
func (b *builder) resource() (*resource.Resource, error) {
	b.resOnce.Do(func() {
		attrs := []resource.Option{resource.WithHost(), resource.WithTelemetrySDK()}
		base := resource.NewSchemaless(serviceNameKey.String(defaultServiceName))
		if b.version != "" {
			base = resource.NewSchemaless(serviceNameKey.String(defaultServiceName), serviceVersionKey.String(b.version))
		}
		detected, err := resource.New(b.ctx, append(attrs, resource.WithFromEnv())...)
		switch {
		case errors.Is(err, resource.ErrPartialResource):
			// A detector failed (e.g. no hostname): keep what was found,
			// report it like an export error, and run.
			otel.Handle(fmt.Errorf("resource: %w", err))
		case err != nil:
			b.resErr = fmt.Errorf("resource: %w", err)
			return
		}
		b.res, b.resErr = resource.Merge(base, detected)
	})
	return b.res, b.resErr
}

// tracerProvider: off (never sampled, so no span is recorded but
// sessions still get trace and span IDs for their log lines) unless
// OTEL_TRACES_EXPORTER names an exporter or, with it unset, an OTLP
// endpoint is configured.
func (b *builder) tracerProvider() (shutdownProvider[trace.TracerProvider], string, error) {
	var none shutdownProvider[trace.TracerProvider]
	res, err := b.resource()
	if err != nil {
		return none, "", err
	}
	name := os.Getenv(envTracesExporter)
	if name == "none" || name == "" && os.Getenv(envOTLPEndpoint) == "" && os.Getenv(envOTLPTraces) == "" {
		tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSampler(sdktrace.NeverSample()))
		return shutdownProvider[trace.TracerProvider]{tp, tp.Shutdown}, "none", nil
	}
	exp, err := autoexport.NewSpanExporter(b.ctx)
	if err != nil {
		return none, "", fmt.Errorf("traces exporter (%s=%q): %w", envTracesExporter, name, err)
	}
	var bsp []sdktrace.BatchSpanProcessorOption
	if os.Getenv(envBSPDelay) == "" {
		bsp = append(bsp, sdktrace.WithBatchTimeout(b.cfg.BatchTimeout))
	}
	// The sampler comes from OTEL_TRACES_SAMPLER (the SDK reads it).
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithBatcher(exp, bsp...))
	if name == "" {
		name = "otlp"
	}
	return shutdownProvider[trace.TracerProvider]{tp, tp.Shutdown}, name, nil
}

// meterProvider: Prometheus on the admin listener by default and for
// OTEL_METRICS_EXPORTER=prometheus (rather than autoexport's separate
// port 9464: wsd already has an admin listener), autoexport otherwise.
func (b *builder) meterProvider() (shutdownProvider[metric.MeterProvider], string, http.Handler, error) {
	var none shutdownProvider[metric.MeterProvider]
	res, err := b.resource()
	if err != nil {
		return none, "", nil, err
	}
	name := os.Getenv(envMetricsExporter)
	var reader sdkmetric.Reader
	var handler http.Handler
	switch name {
	case "none":
		return shutdownProvider[metric.MeterProvider]{noopmetric.NewMeterProvider(), func(context.Context) error { return nil }}, "none", nil, nil
	case "", "prometheus":
		name = "prometheus"
		reg := prometheus.NewRegistry()
		pr, err := promexporter.New(promexporter.WithRegisterer(reg))
		if err != nil {
			return none, "", nil, fmt.Errorf("prometheus exporter: %w", err)
		}
		reader = pr
		handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	default:
		reader, err = autoexport.NewMetricReader(b.ctx)
		if err != nil {
			return none, "", nil, fmt.Errorf("metrics exporter (%s=%q): %w", envMetricsExporter, name, err)
		}
	}
	// Exemplars off: measurements are taken with a span-less context (see
	// bg), so the trace-based filter would only cost time per message.
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	return shutdownProvider[metric.MeterProvider]{mp, mp.Shutdown}, name, handler, nil
}

// loggerProvider: only when OTEL_LOGS_EXPORTER asks for one (autoexport
// would default to otlp; wsd's default is stdout logging only).
func (b *builder) loggerProvider() (shutdownProvider[otellog.LoggerProvider], string, error) {
	var none shutdownProvider[otellog.LoggerProvider]
	name := os.Getenv(envLogsExporter)
	if name == "" || name == "none" {
		return none, "none", nil
	}
	res, err := b.resource()
	if err != nil {
		return none, "", err
	}
	exp, err := autoexport.NewLogExporter(b.ctx)
	if err != nil {
		return none, "", fmt.Errorf("logs exporter (%s=%q): %w", envLogsExporter, name, err)
	}
	lp := sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(sdklog.NewBatchProcessor(exp)))
	return shutdownProvider[otellog.LoggerProvider]{lp, lp.Shutdown}, name, nil
}
