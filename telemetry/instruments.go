package telemetry

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/wsd-dev/wsd/service"
)

// Attribute keys. Metric attributes only ever take values from fixed
// sets (endpoint, close-code label, initiator, reject reason, event,
// errno); the client-controlled values (topic, peer address, raw close
// code, reason) go on spans only.
const (
	serviceNameKey    = attribute.Key("service.name")
	serviceVersionKey = attribute.Key("service.version")

	keyEndpoint     = attribute.Key("ws.endpoint")
	keyTopic        = attribute.Key("ws.topic")
	keyPeerAddress  = attribute.Key("network.peer.address")
	keyPeerPort     = attribute.Key("network.peer.port")
	keyCloseCode    = attribute.Key("ws.close.code")
	keyCloseReason  = attribute.Key("ws.close.reason")
	keyInitiator    = attribute.Key("ws.close.initiator")
	keyCloseValid   = attribute.Key("ws.close.valid")
	keyMessagesIn   = attribute.Key("ws.messages.in")
	keyMessagesOut  = attribute.Key("ws.messages.out")
	keyBytesIn      = attribute.Key("ws.bytes.in")
	keyBytesOut     = attribute.Key("ws.bytes.out")
	keyDropped      = attribute.Key("ws.dropped")
	keyBuffered     = attribute.Key("ws.buffered_bytes")
	keyRejectReason = attribute.Key("ws.reject.reason")
	keyBPEvent      = attribute.Key("ws.backpressure.event")
	keyMessageSize  = attribute.Key("ws.message.size")
	keyDropReason   = attribute.Key("ws.drop.reason")
	keyErrorType    = attribute.Key("error.type")
	keyHTTPMethod   = attribute.Key("http.request.method")
	keyHTTPStatus   = attribute.Key("http.response.status_code")
	keyURLPath      = attribute.Key("url.path")
	keyAuthReason   = attribute.Key("ws.auth.reason")
	keyEndUserID    = attribute.Key("enduser.id")
)

// sizeSampleEvery: wsd.message.size records one received message in this
// many per endpoint, see session.MessageReceived. Message and byte totals
// are exact (wsd.messages.*, wsd.payload.*).
const sizeSampleEvery = 8

// depthSampleEvery: wsd.send_buffer.depth records one queued message in
// this many per connection, see session.MessageQueued.
const depthSampleEvery = 8

// Histogram buckets. Message sizes and send-buffer levels span bytes to
// the 64 KiB message cap and the multi-MiB buffer caps; sessions last
// from a failed handshake to days.
var (
	sizeBuckets     = []float64{0, 64, 256, 1024, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20}
	durationBuckets = []float64{0.1, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}
)

// instruments holds every instrument, created once by New. The names
// and meanings are the README's metric table.
type instruments struct {
	opened, closed, rejected, acceptErrors     metric.Int64Counter
	msgsIn, msgsOut, bytesIn, bytesOut         metric.Int64ObservableCounter
	transitions, dropped, evicted, hbTimeouts  metric.Int64Counter
	messageSize, bufferDepth                   metric.Int64Histogram
	sessionDuration                            metric.Float64Histogram
	active, paused, buffered, fdCount, fdLimit metric.Int64Observable
	panics                                     metric.Int64ObservableCounter
	authFailures                               metric.Int64ObservableCounter

	// authCounts are the wsd.auth.failures totals, one per
	// service.AuthFailures entry (same index), so that every reason is
	// exported from the start, at zero.
	authCounts []atomic.Int64
	authSets   []metric.ObserveOption

	meter  metric.Meter
	eps    [2]endpointOpts    // [0] echo, [1] topic
	counts [2]messageCounters // same index

	regMu sync.Mutex
	regs  []metric.Registration

	// Attribute sets keyed by bounded values, built on first use (the
	// close-code labels are a service detail this package does not
	// enumerate). Session-rate paths only: messages use eps.
	closeOpts  sync.Map // closeKey → []metric.AddOption
	rejectOpts sync.Map // service.RejectReason → []metric.AddOption
	acceptOpts sync.Map // string → []metric.AddOption
	bpOpts     [3][]metric.AddOption
	dropOpts   []metric.AddOption
}

// endpointOpts are the precomputed measurement options of one endpoint:
// the per-message calls pass them as-is, so recording allocates nothing.
type endpointOpts struct {
	add               []metric.AddOption
	rec               []metric.RecordOption
	set               attribute.Set
	durationInitiator map[service.Initiator][]metric.RecordOption
}

// messageCounters are the per-endpoint message and byte totals. They are
// plain atomics read by observable counters at collection time: an
// atomic add costs a few nanoseconds per message where a synchronous SDK
// counter costs tens (attribute resolution, exemplar filter, map
// lookup), and the per-message path is where the CPU budget is. Each
// sits on its own cache line: the readers and writers of different
// directions run on different cores.
type messageCounters struct {
	msgsIn, msgsOut, bytesIn, bytesOut paddedInt64
}

type paddedInt64 struct {
	atomic.Int64
	_ [56]byte
}

type closeKey struct {
	ep        service.Endpoint
	label     string
	initiator service.Initiator
}

func newInstruments(m metric.Meter) (*instruments, error) {
	in := &instruments{meter: m}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	in.opened = counter("wsd.connections.opened", "{connection}", "WebSocket connections upgraded.")
	in.closed = counter("wsd.connections.closed", "{connection}", "WebSocket connections ended, by close code and initiator.")
	in.rejected = counter("wsd.upgrades.rejected", "{request}", "Upgrade requests refused before the handshake, by reason.")
	in.acceptErrors = counter("wsd.accept.errors", "{error}", "Failed accepts on a listener (descriptor exhaustion), by errno.")
	observed := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	in.msgsIn = observed("wsd.messages.received", "{message}", "Data messages read from clients.")
	in.msgsOut = observed("wsd.messages.sent", "{message}", "Data messages written to clients.")
	in.bytesIn = observed("wsd.payload.received", "By", "Payload bytes of data messages read from clients.")
	in.bytesOut = observed("wsd.payload.sent", "By", "Payload bytes of data messages written to clients.")
	in.transitions = counter("wsd.backpressure.transitions", "{transition}", "Send-buffer threshold crossings (warn, pause, resume).")
	in.dropped = counter("wsd.messages.dropped", "{message}", "Fan-out messages discarded for slow subscribers (slow_consumer: drop).")
	in.evicted = counter("wsd.slow_consumers.evicted", "{connection}", "Subscribers closed with 1013 as slow consumers.")
	in.authFailures = observed("wsd.auth.failures", "{failure}", "Refused tokens and missing topic rights, by reason (ws.auth.reason).")
	in.hbTimeouts = counter("wsd.heartbeat.timeouts", "{connection}", "Connections closed because nothing arrived for ping_interval + pong_timeout.")

	hist := func(name, desc string) metric.Int64Histogram {
		h, err := m.Int64Histogram(name, metric.WithUnit("By"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(sizeBuckets...))
		errs = append(errs, err)
		return h
	}
	in.messageSize = hist("wsd.message.size", "Payload size of data messages received; sampled, one message in 8.")
	in.bufferDepth = hist("wsd.send_buffer.depth", "A connection's send buffer (bytes waiting, this message included) when a message is queued; sampled, one message in 8 per connection.")
	var err error
	in.sessionDuration, err = m.Float64Histogram("wsd.session.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from upgrade to close, by endpoint and initiator."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	errs = append(errs, err)

	gauge := func(name, unit, desc string) metric.Int64Observable {
		g, err := m.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	in.active = gauge("wsd.connections.active", "{connection}", "WebSocket connections open now, by endpoint.")
	in.paused = gauge("wsd.connections.paused", "{connection}", "Connections whose reading is paused by backpressure now.")
	in.buffered = gauge("wsd.send_buffer.usage", "By", "Bytes accepted for sending and not yet written, all connections.")
	var perr error
	in.panics, perr = m.Int64ObservableCounter("wsd.panics", metric.WithUnit("{panic}"),
		metric.WithDescription("Panics recovered on a connection's goroutines (read loop, write jobs, upgrade, message handling); each closed only its connection. Read from the server's own counter (panics_total)."))
	errs = append(errs, perr)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	for i, ep := range [...]service.Endpoint{service.EndpointEcho, service.EndpointTopic} {
		set := attribute.NewSet(keyEndpoint.String(string(ep)))
		e := endpointOpts{
			set:               set,
			add:               []metric.AddOption{metric.WithAttributeSet(set)},
			rec:               []metric.RecordOption{metric.WithAttributeSet(set)},
			durationInitiator: map[service.Initiator][]metric.RecordOption{},
		}
		for _, ini := range [...]service.Initiator{service.InitiatorClient, service.InitiatorServer, service.InitiatorAbnormal} {
			e.durationInitiator[ini] = []metric.RecordOption{metric.WithAttributes(keyEndpoint.String(string(ep)), keyInitiator.String(string(ini)))}
		}
		in.eps[i] = e
	}
	for i, ev := range [...]service.BackpressureEvent{service.BackpressureWarn, service.BackpressurePause, service.BackpressureResume} {
		in.bpOpts[i] = []metric.AddOption{metric.WithAttributes(keyBPEvent.String(string(ev)))}
	}
	in.dropOpts = []metric.AddOption{metric.WithAttributes(keyDropReason.String("slow_consumer"))}
	in.authCounts = make([]atomic.Int64, len(service.AuthFailures))
	for _, r := range service.AuthFailures {
		in.authSets = append(in.authSets, metric.WithAttributes(keyAuthReason.String(string(r))))
	}

	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i := range in.counts {
			c, set := &in.counts[i], metric.WithAttributeSet(in.eps[i].set)
			o.ObserveInt64(in.msgsIn, c.msgsIn.Load(), set)
			o.ObserveInt64(in.msgsOut, c.msgsOut.Load(), set)
			o.ObserveInt64(in.bytesIn, c.bytesIn.Load(), set)
			o.ObserveInt64(in.bytesOut, c.bytesOut.Load(), set)
		}
		for i := range in.authCounts {
			o.ObserveInt64(in.authFailures, in.authCounts[i].Load(), in.authSets[i])
		}
		return nil
	}, in.msgsIn, in.msgsOut, in.bytesIn, in.bytesOut, in.authFailures)
	if err != nil {
		return nil, err
	}
	in.regs = append(in.regs, reg)
	return in, nil
}

func (in *instruments) counters(ep service.Endpoint) *messageCounters {
	if ep == service.EndpointTopic {
		return &in.counts[1]
	}
	return &in.counts[0]
}

func (in *instruments) endpoint(ep service.Endpoint) *endpointOpts {
	if ep == service.EndpointTopic {
		return &in.eps[1]
	}
	return &in.eps[0]
}

func (in *instruments) backpressure(ev service.BackpressureEvent) []metric.AddOption {
	switch ev {
	case service.BackpressurePause:
		return in.bpOpts[1]
	case service.BackpressureResume:
		return in.bpOpts[2]
	}
	return in.bpOpts[0]
}

func (in *instruments) closeOptions(ep service.Endpoint, label string, ini service.Initiator) []metric.AddOption {
	k := closeKey{ep, label, ini}
	if v, ok := in.closeOpts.Load(k); ok {
		return v.([]metric.AddOption)
	}
	opts := []metric.AddOption{metric.WithAttributes(keyEndpoint.String(string(ep)),
		keyCloseCode.String(label), keyInitiator.String(string(ini)))}
	v, _ := in.closeOpts.LoadOrStore(k, opts)
	return v.([]metric.AddOption)
}

func (in *instruments) rejectOptions(r service.RejectReason) []metric.AddOption {
	if v, ok := in.rejectOpts.Load(r); ok {
		return v.([]metric.AddOption)
	}
	v, _ := in.rejectOpts.LoadOrStore(r, []metric.AddOption{metric.WithAttributes(keyRejectReason.String(string(r)))})
	return v.([]metric.AddOption)
}

func (in *instruments) acceptOptions(errno string) []metric.AddOption {
	if v, ok := in.acceptOpts.Load(errno); ok {
		return v.([]metric.AddOption)
	}
	v, _ := in.acceptOpts.LoadOrStore(errno, []metric.AddOption{metric.WithAttributes(keyErrorType.String(errno))})
	return v.([]metric.AddOption)
}

// LoadSource is what the load gauges read: *service.Server implements it
// with atomic loads only.
type LoadSource interface {
	Load() service.Load
}

// Watch registers the gauges that read the server's live load —
// wsd.connections.active, wsd.connections.paused,
// wsd.send_buffer.usage and the wsd.panics counter — on every collection. Call it once per server,
// after service.New; Shutdown unregisters it. It fails only if the meter
// refuses the callback.
func (t *Telemetry) Watch(src LoadSource) error {
	in := t.inst
	echo, topic := in.eps[0].set, in.eps[1].set
	reg, err := in.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		l := src.Load()
		o.ObserveInt64(in.active, l.EchoConnections, metric.WithAttributeSet(echo))
		o.ObserveInt64(in.active, l.TopicConnections, metric.WithAttributeSet(topic))
		o.ObserveInt64(in.paused, l.Paused)
		o.ObserveInt64(in.buffered, l.BufferedBytes)
		o.ObserveInt64(in.panics, l.Panics)
		return nil
	}, in.active, in.paused, in.buffered, in.panics)
	if err != nil {
		return err
	}
	in.regMu.Lock()
	in.regs = append(in.regs, reg)
	in.regMu.Unlock()
	return nil
}

func (in *instruments) unregister() error {
	in.regMu.Lock()
	defer in.regMu.Unlock()
	var errs []error
	for _, r := range in.regs {
		errs = append(errs, r.Unregister())
	}
	in.regs = nil
	return errors.Join(errs...)
}

// authFailed counts one failure; an unknown reason (none exists) is
// not counted rather than exported as a new series.
func (in *instruments) authFailed(r service.AuthFailure) {
	for i, known := range service.AuthFailures {
		if known == r {
			in.authCounts[i].Add(1)
			return
		}
	}
}
