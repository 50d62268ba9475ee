package natsbus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// instrumentationName is the scope of the bus's spans and metrics.
const instrumentationName = "github.com/wsd-dev/wsd/natsbus"

// Metric attributes take values from fixed sets only (no topic names).
var (
	keyDirection  = attribute.Key("ws.bus.direction")
	keyDropReason = attribute.Key("ws.drop.reason")
)

// latencyBuckets span a same-host hop (sub-millisecond) to a broker
// outage's reconnect buffer (seconds).
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

type telemetryOptions struct {
	tp trace.TracerProvider
	mp metric.MeterProvider
}

// WithTracerProvider sets the provider of the ws.bus.deliver spans
// (default: none recorded). telemetry.Telemetry.TracerProvider gives
// wsd's.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tel.tp = tp }
}

// WithMeterProvider sets the provider of the wsd.bus.* metrics (default:
// none recorded). telemetry.Telemetry.MeterProvider gives wsd's.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.tel.mp = mp }
}

// busTelemetry is the bus's instrumentation. The totals are the Bus's
// own counters (the ones /debug/stats reports), read by observable
// instruments at collection time; only the latency histogram records on
// the data path.
type busTelemetry struct {
	tracer trace.Tracer
	prop   propagation.TraceContext
	hist   metric.Float64Histogram
	reg    metric.Registration
	kind   trace.SpanStartOption
}

func newBusTelemetry(b *Bus, o telemetryOptions) (*busTelemetry, error) {
	if o.tp == nil {
		o.tp = tracenoop.NewTracerProvider()
	}
	if o.mp == nil {
		o.mp = noopmetric.NewMeterProvider()
	}
	t := &busTelemetry{tracer: o.tp.Tracer(instrumentationName), kind: trace.WithSpanKind(trace.SpanKindConsumer)}
	m := o.mp.Meter(instrumentationName)
	// No unit: "1" would make Prometheus name it wsd_bus_connected_ratio.
	connected, err := m.Int64ObservableGauge("wsd.bus.connected",
		metric.WithDescription("1 while the NATS connection is up, else 0."))
	if err != nil {
		return nil, err
	}
	subs, err := m.Int64ObservableUpDownCounter("wsd.bus.subscriptions", metric.WithUnit("{subscription}"),
		metric.WithDescription("NATS subscriptions: topics with a local subscriber."))
	if err != nil {
		return nil, err
	}
	msgs, err := m.Int64ObservableCounter("wsd.bus.messages", metric.WithUnit("{message}"),
		metric.WithDescription("Messages handed to NATS (published) or received from other replicas (received)."))
	if err != nil {
		return nil, err
	}
	dropped, err := m.Int64ObservableCounter("wsd.bus.dropped", metric.WithUnit("{message}"),
		metric.WithDescription("Messages lost on the broker path, by reason (disconnected, publish_queue_full, publish_error, slow_consumer)."))
	if err != nil {
		return nil, err
	}
	reconnects, err := m.Int64ObservableCounter("wsd.bus.reconnects", metric.WithUnit("{reconnect}"),
		metric.WithDescription("Successful reconnections to NATS."))
	if err != nil {
		return nil, err
	}
	if t.hist, err = m.Float64Histogram("wsd.bus.latency", metric.WithUnit("s"),
		metric.WithDescription("Time from publish on one replica to fan-out on another (clocks of both hosts)."),
		metric.WithExplicitBucketBoundaries(latencyBuckets...)); err != nil {
		return nil, err
	}
	set := func(kv attribute.KeyValue) metric.ObserveOption {
		return metric.WithAttributeSet(attribute.NewSet(kv))
	}
	pub, recv := set(keyDirection.String("published")), set(keyDirection.String("received"))
	dDisc, dQueue := set(keyDropReason.String("disconnected")), set(keyDropReason.String("publish_queue_full"))
	dErr, dSlow := set(keyDropReason.String("publish_error")), set(keyDropReason.String("slow_consumer"))
	t.reg, err = m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		up := int64(0)
		if b.connected.Load() {
			up = 1
		}
		b.subMu.Lock()
		n, slow := len(b.subs), b.slowDroppedLocked()
		b.subMu.Unlock()
		ob.ObserveInt64(connected, up)
		ob.ObserveInt64(subs, int64(n))
		ob.ObserveInt64(msgs, b.published.Load(), pub)
		ob.ObserveInt64(msgs, b.received.Load(), recv)
		ob.ObserveInt64(dropped, b.dropDisconnected.Load(), dDisc)
		ob.ObserveInt64(dropped, b.dropQueue.Load(), dQueue)
		ob.ObserveInt64(dropped, b.dropError.Load(), dErr)
		ob.ObserveInt64(dropped, slow, dSlow)
		ob.ObserveInt64(reconnects, b.reconnects.Load())
		return nil
	}, connected, subs, msgs, dropped, reconnects)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (t *busTelemetry) unregister() error { return t.reg.Unregister() }

// inject writes sc as W3C traceparent/tracestate headers.
func (t *busTelemetry) inject(sc trace.SpanContext, h nats.Header) {
	t.prop.Inject(trace.ContextWithSpanContext(context.Background(), sc), headerCarrier(h))
}

// headerCarrier is a propagation.TextMapCarrier on NATS headers. NATS
// header names are case-sensitive, so the W3C names are kept as the
// propagator writes them ("traceparent"), which is what other NATS
// clients' OpenTelemetry instrumentation reads and writes;
// propagation.HeaderCarrier would canonicalize them to "Traceparent".
type headerCarrier nats.Header

func (c headerCarrier) Get(key string) string { return nats.Header(c).Get(key) }
func (c headerCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// latency records a publish-to-delivery time; a negative one (the
// hosts' clocks disagree) is not a measurement and is skipped.
func (t *busTelemetry) latency(d time.Duration) {
	if d >= 0 {
		t.hist.Record(context.Background(), d.Seconds())
	}
}

// deliverSpan starts the ws.bus.deliver span of a message that carries
// its publisher's trace context, and returns the function that ends it.
// The span is a root of its own with a link to the publishing session's
// span: as a child it would pile every delivery of a long session, on
// every replica, into one trace; Jaeger shows the link as a reference
// to follow to the publisher.
func (t *busTelemetry) deliverSpan(topic string, h nats.Header) (end func()) {
	remote := trace.SpanContextFromContext(t.prop.Extract(context.Background(), headerCarrier(h)))
	if !remote.IsValid() {
		return func() {}
	}
	_, span := t.tracer.Start(context.Background(), "ws.bus.deliver", t.kind, trace.WithNewRoot(),
		trace.WithLinks(trace.Link{SpanContext: remote}),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("ws.topic", topic)))
	return func() { span.End() }
}
