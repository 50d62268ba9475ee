package natsbus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
	"github.com/wsd-dev/wsd/telemetry"
)

// collect reads every metric of reader, by name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// sumBy returns an int64 sum's points keyed by the value of key ("" for
// a point without attributes).
func sumBy(t *testing.T, ms map[string]metricdata.Aggregation, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	s, ok := ms[name].(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s: %T, want an int64 sum (exported from the start)", name, ms[name])
	}
	out := map[string]int64{}
	for _, dp := range s.DataPoints {
		v, _ := dp.Attributes.Value(key)
		out[v.AsString()] = dp.Value
	}
	return out
}

// TestTelemetry: the bus's series exist at zero before any traffic; a
// message from A is delivered on B under a ws.bus.deliver span linked
// to the publishing session's span on A (trace context in the NATS
// headers), and B counts and times it.
func TestTelemetry(t *testing.T) {
	ns := startNATS(t, -1)
	recA := tracetest.NewSpanRecorder()
	tpA := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recA))
	t.Cleanup(func() { _ = tpA.Shutdown(context.Background()) })
	telA, err := telemetry.New(context.Background(), telemetry.DefaultConfig(),
		telemetry.WithTracerProvider(tpA), telemetry.WithMeterProvider(noopmetric.NewMeterProvider()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = telA.Shutdown(context.Background()) })
	a := startReplica(t, "A", testBusConfig(ns), service.WithObserver(telA))

	recB := tracetest.NewSpanRecorder()
	tpB := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recB))
	t.Cleanup(func() { _ = tpB.Shutdown(context.Background()) })
	reader := sdkmetric.NewManualReader()
	mpB := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mpB.Shutdown(context.Background()) })
	b := startReplica(t, "B", testBusConfig(ns), WithTracerProvider(tpB), WithMeterProvider(mpB))

	ms := collect(t, reader)
	drops := sumBy(t, ms, "wsd.bus.dropped", keyDropReason)
	if want := map[string]int64{"disconnected": 0, "publish_queue_full": 0, "publish_error": 0, "slow_consumer": 0}; fmt.Sprint(drops) != fmt.Sprint(want) {
		t.Fatalf("wsd.bus.dropped at start %v, want %v", drops, want)
	}
	if msgs := sumBy(t, ms, "wsd.bus.messages", keyDirection); fmt.Sprint(msgs) != fmt.Sprint(map[string]int64{"published": 0, "received": 0}) {
		t.Fatalf("wsd.bus.messages at start %v, want published and received at 0", msgs)
	}
	if r := sumBy(t, ms, "wsd.bus.reconnects", ""); r[""] != 0 {
		t.Fatalf("wsd.bus.reconnects at start %v, want 0", r)
	}

	pub := subscribe(t, a, "room")
	sub := subscribe(t, b, "room")
	link(t, pub, sub)
	pub.send(t, "traced")
	waitTexts(t, sub, "subscriber on B", []string{"traced"})

	var session trace.SpanContext
	for _, s := range recA.Started() {
		if s.Name() == "ws.session" {
			session = s.SpanContext()
		}
	}
	if !session.IsValid() {
		t.Fatal("no ws.session span on A")
	}
	received := b.srv.Stats().BusReceivedTotal
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		var linked int64
		for _, s := range recB.Ended() {
			if s.Name() != "ws.bus.deliver" {
				continue
			}
			if s.Parent().IsValid() || len(s.Links()) != 1 || s.SpanKind() != trace.SpanKindConsumer {
				t.Fatalf("ws.bus.deliver: parent %v, links %v, kind %v: want a consumer root span with one link", s.Parent(), s.Links(), s.SpanKind())
			}
			l := s.Links()[0].SpanContext
			if l.TraceID() != session.TraceID() || l.SpanID() != session.SpanID() {
				t.Fatalf("ws.bus.deliver links to %s/%s, want the publisher's ws.session %s/%s", l.TraceID(), l.SpanID(), session.TraceID(), session.SpanID())
			}
			linked++
		}
		if linked != received {
			return fmt.Errorf("%d linked ws.bus.deliver spans on B, want one per received message (%d)", linked, received)
		}
		return nil
	})

	ms = collect(t, reader)
	if msgs := sumBy(t, ms, "wsd.bus.messages", keyDirection); msgs["received"] != received {
		t.Fatalf("wsd.bus.messages %v, want received = bus_received_total %d", msgs, received)
	}
	h, ok := ms["wsd.bus.latency"].(metricdata.Histogram[float64])
	if !ok || len(h.DataPoints) != 1 || int64(h.DataPoints[0].Count) != received {
		t.Fatalf("wsd.bus.latency %+v, want one point counting the %d received messages", ms["wsd.bus.latency"], received)
	}
	if g, ok := ms["wsd.bus.connected"].(metricdata.Gauge[int64]); !ok || len(g.DataPoints) != 1 || g.DataPoints[0].Value != 1 {
		t.Fatalf("wsd.bus.connected %+v, want 1", ms["wsd.bus.connected"])
	}
	if s := sumBy(t, ms, "wsd.bus.subscriptions", ""); s[""] != 1 {
		t.Fatalf("wsd.bus.subscriptions %v, want 1", s)
	}

	// A message from another NATS client, with only a lowercase W3C
	// traceparent (as OpenTelemetry's NATS instrumentation writes it) and
	// none of wsd's headers, is delivered as text and linked too.
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const ext = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	if err := nc.PublishMsg(&nats.Msg{Subject: subject("wsd", "room"), Data: []byte("external"),
		Header: nats.Header{"traceparent": {ext}}}); err != nil {
		t.Fatal(err)
	}
	waitTexts(t, sub, "subscriber on B", []string{"traced", "external"})
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		for _, s := range recB.Ended() {
			if s.Name() == "ws.bus.deliver" && len(s.Links()) == 1 && s.Links()[0].SpanContext.TraceID().String() == "0af7651916cd43dd8448eb211c80319c" {
				return nil
			}
		}
		return fmt.Errorf("no ws.bus.deliver span linked to the external publisher's trace")
	})
}
