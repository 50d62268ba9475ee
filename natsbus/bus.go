// Package natsbus is a service.Bus shared by several wsd replicas
// through NATS core: a message published on one replica reaches the
// subscribers of its topic on every replica.
//
// Each replica delivers its own publishes to its local subscribers
// directly (the in-process service.Hub) and hands them to NATS for the
// others; the connection is opened with NoEcho, so the broker never
// sends a replica's own messages back and nobody gets a message twice.
// A replica holds one NATS subscription per topic that has a local
// subscriber, released when the last one leaves. Delivery across
// replicas is at most once: messages published while the broker is
// unreachable, or beyond the bounded queues, are dropped and counted
// (BusStats.Dropped, wsd.bus.dropped), never buffered without limit.
// Messages of one publisher arrive in the order it sent them.
//
// Sessions never wait for NATS: publishes go through a bounded queue to
// one goroutine that owns the broker writes, and subscription changes
// are applied by the same goroutine.
package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsd-dev/wsd/service"
)

// Headers of every message wsd publishes. Messages without them (e.g.
// from `nats pub`) are delivered too: as text when their payload is
// valid UTF-8, else as binary.
const (
	hdrOpcode = "Wsd-Opcode" // "text" or "binary"
	hdrSent   = "Wsd-Sent"   // publish time, Unix nanoseconds
)

// Bus is the NATS-backed service.Bus; it also implements
// service.ContextPublisher (trace context travels in message headers),
// service.BusStatser and io.Closer. Create it with New, pass it to
// service.WithBus, and Close it after Server.Serve returned. The zero
// value is not usable.
type Bus struct {
	cfg  Config
	log  *slog.Logger
	hub  *service.Hub
	nc   *nats.Conn
	tel  *busTelemetry
	seed uint64 // reconnect jitter

	mu   sync.Mutex
	want map[string]int // local subscribers per topic

	subMu sync.Mutex
	subs  map[string]*nats.Subscription // written by run only

	queue      chan outgoing
	kick       chan struct{} // want changed: reconcile subscriptions
	stop       chan struct{}
	done       chan struct{} // run returned
	connClosed chan struct{} // the client's closed handler ran
	stopped    atomic.Bool
	// connected follows the client's connection callbacks (delivered in
	// order): nc.IsConnected takes the client's lock, which a write to a
	// stalled server holds for up to write_timeout, and /debug/stats
	// must not wait for that.
	connected atomic.Bool
	closeOnce sync.Once
	closeErr  error

	published, received, reconnects        atomic.Int64
	dropDisconnected, dropQueue, dropError atomic.Int64
	dropSlowReleased                       atomic.Int64 // slow-consumer drops of released subscriptions
}

// outgoing is one publish waiting for the broker goroutine.
type outgoing struct {
	subject string
	opcode  gws.Opcode
	payload []byte
	sent    int64
	span    trace.SpanContext
}

var (
	_ service.Bus              = (*Bus)(nil)
	_ service.ContextPublisher = (*Bus)(nil)
	_ service.BusStatser       = (*Bus)(nil)
)

// Option configures New.
type Option func(*options)

type options struct {
	log *slog.Logger
	tel telemetryOptions
}

// WithLogger sets the logger of connection events (default
// slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// New validates cfg and starts connecting to NATS. It does not wait for
// the connection: wsd starts (and serves its local subscribers) while
// the broker is unreachable, and the client reconnects forever. It fails
// when cfg is invalid (the error names the bad keys, relative to
// bus.nats), when a credentials or TLS file cannot be used, or when the
// instruments cannot be registered.
func New(cfg Config, opts ...Option) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	o := options{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	b := &Bus{
		cfg: cfg, log: o.log, hub: service.NewHub(), seed: rand.Uint64(),
		want: map[string]int{}, subs: map[string]*nats.Subscription{},
		queue: make(chan outgoing, cfg.PublishQueue), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}), connClosed: make(chan struct{}),
	}
	var err error
	if b.nc, err = nats.Connect(cfg.URL, b.natsOptions()...); err != nil {
		// With RetryOnFailedConnect only option errors reach here
		// (credentials, TLS files).
		return nil, fmt.Errorf("connect: %w", err)
	}
	if b.tel, err = newBusTelemetry(b, o.tel); err != nil {
		b.nc.Close()
		<-b.connClosed
		return nil, fmt.Errorf("bus telemetry: %w", err)
	}
	go b.run()
	return b, nil
}

func (b *Bus) natsOptions() []nats.Option {
	c := b.cfg
	buf := c.ReconnectBufferBytes
	if buf == 0 {
		buf = -1 // nats.go: negative disables the reconnect buffer
	}
	opts := []nats.Option{
		nats.Name("wsd"),
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.Timeout(c.ConnectTimeout),
		nats.CustomReconnectDelay(b.reconnectDelay),
		nats.ReconnectBufSize(buf),
		nats.FlusherTimeout(c.WriteTimeout),
		nats.DrainTimeout(c.DrainTimeout),
		nats.ConnectHandler(func(nc *nats.Conn) {
			b.connected.Store(true)
			b.log.Info("nats connected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.connected.Store(false)
			if b.stopped.Load() {
				return // Close: the closed handler's business
			}
			b.log.Warn("nats disconnected: cross-replica messages are dropped until reconnected", "error", errString(err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.connected.Store(true)
			b.reconnects.Add(1)
			b.log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			b.connected.Store(false)
			b.log.Info("nats connection closed")
			close(b.connClosed)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				// Once per episode (nats.go resets it when the
				// subscription catches up); the drops are counted from
				// Subscription.Dropped.
				b.log.Warn("nats slow consumer: dropping messages from other replicas", "subject", subjectOf(sub))
				return
			}
			b.log.Warn("nats error", "error", errString(err))
		}),
	}
	if c.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredentialsFile))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLSCAFile))
	}
	if c.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(c.TLSCertFile, c.TLSKeyFile))
	}
	return opts
}

// reconnectDelay is the pause after the attempt-th failed round over the
// server list: ReconnectWait doubling up to ReconnectWaitMax, plus up to
// 25% jitter.
func (b *Bus) reconnectDelay(attempt int) time.Duration {
	d := b.cfg.ReconnectWait
	for i := 1; i < attempt && d < b.cfg.ReconnectWaitMax; i++ {
		d *= 2
	}
	d = min(d, b.cfg.ReconnectWaitMax)
	r := rand.New(rand.NewPCG(b.seed, uint64(attempt)))
	return d + time.Duration(r.Int64N(int64(d)/4+1))
}

func errString(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}

func subjectOf(sub *nats.Subscription) string {
	if sub == nil {
		return ""
	}
	return sub.Subject
}

// Subscribe implements service.Bus: sub joins the local fan-out at once;
// the topic's NATS subscription is created in the background when sub
// is its first local subscriber.
func (b *Bus) Subscribe(topic string, sub service.Subscriber) func() {
	unsub := b.hub.Subscribe(topic, sub)
	b.mu.Lock()
	b.want[topic]++
	first := b.want[topic] == 1
	b.mu.Unlock()
	if first {
		b.signal()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			unsub()
			b.mu.Lock()
			b.want[topic]--
			last := b.want[topic] == 0
			if last {
				delete(b.want, topic)
			}
			b.mu.Unlock()
			if last {
				b.signal()
			}
		})
	}
}

func (b *Bus) signal() {
	select {
	case b.kick <- struct{}{}:
	default: // a reconcile is already due
	}
}

// Publish implements service.Bus; see PublishContext.
func (b *Bus) Publish(topic string, from service.Subscriber, opcode gws.Opcode, payload []byte) {
	b.PublishContext(context.Background(), topic, from, opcode, payload)
}

// PublishContext implements service.ContextPublisher: it delivers to the
// local subscribers but from, then queues the message for the other
// replicas with ctx's span context (when sampled). It never blocks: with
// the queue full, or after Close, the remote copy is dropped and
// counted. payload must not change afterwards.
func (b *Bus) PublishContext(ctx context.Context, topic string, from service.Subscriber, opcode gws.Opcode, payload []byte) {
	b.hub.Publish(topic, from, opcode, payload)
	if b.stopped.Load() {
		b.dropDisconnected.Add(1)
		return
	}
	m := outgoing{subject: subject(b.cfg.SubjectPrefix, topic), opcode: opcode, payload: payload, sent: time.Now().UnixNano()}
	if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
		m.span = sc
	}
	select {
	case b.queue <- m:
	default:
		b.dropQueue.Add(1)
	}
}

// Counts implements service.Bus: the local topics and subscribers.
func (b *Bus) Counts() (topics, subscribers int) { return b.hub.Counts() }

// BusStats implements service.BusStatser.
func (b *Bus) BusStats() service.BusStats {
	b.subMu.Lock()
	n, slow := len(b.subs), b.slowDroppedLocked()
	b.subMu.Unlock()
	return service.BusStats{
		Connected:     b.connected.Load(),
		Subscriptions: n,
		Published:     b.published.Load(),
		Received:      b.received.Load(),
		Dropped:       b.dropDisconnected.Load() + b.dropQueue.Load() + b.dropError.Load() + slow,
	}
}

// slowDroppedLocked sums the client's slow-consumer drops of the live
// subscriptions and of the released ones; b.subMu is held.
func (b *Bus) slowDroppedLocked() int64 {
	n := b.dropSlowReleased.Load()
	for _, s := range b.subs {
		if d, err := s.Dropped(); err == nil {
			n += int64(d)
		}
	}
	return n
}

// run owns the broker writes: queued publishes, in order, and the
// subscription changes. On stop it sends what is queued and returns.
func (b *Bus) run() {
	defer close(b.done)
	for {
		select {
		case m := <-b.queue:
			b.send(m)
		case <-b.kick:
			b.reconcile()
		case <-b.stop:
			for {
				select {
				case m := <-b.queue:
					b.send(m)
				default:
					return
				}
			}
		}
	}
}

func (b *Bus) send(m outgoing) {
	op := "text"
	if m.opcode == gws.OpcodeBinary {
		op = "binary"
	}
	msg := &nats.Msg{Subject: m.subject, Data: m.payload, Header: nats.Header{
		hdrOpcode: {op},
		hdrSent:   {strconv.FormatInt(m.sent, 10)},
	}}
	if m.span.IsValid() {
		b.tel.inject(m.span, msg.Header)
	}
	switch err := b.nc.PublishMsg(msg); {
	case err == nil:
		b.published.Add(1)
	case errors.Is(err, nats.ErrReconnectBufExceeded), errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrConnectionReconnecting):
		b.dropDisconnected.Add(1)
	case !b.nc.IsConnected():
		// The write failed because the connection just broke.
		b.dropDisconnected.Add(1)
	default:
		// E.g. a message above the server's max_payload: the broker
		// refuses it, the local subscribers already have it.
		b.dropError.Add(1)
		b.log.Debug("nats publish failed", "subject", m.subject, "error", err)
	}
}

// reconcile makes the NATS subscriptions match the topics with local
// subscribers. Only run calls it, so b.subs has a single writer.
func (b *Bus) reconcile() {
	var add, del []string
	b.mu.Lock()
	for t := range b.want {
		if _, ok := b.subs[t]; !ok {
			add = append(add, t)
		}
	}
	for t := range b.subs {
		if b.want[t] == 0 {
			del = append(del, t)
		}
	}
	b.mu.Unlock()
	for _, t := range del {
		b.release(t)
	}
	for _, t := range add {
		s, err := b.nc.Subscribe(subject(b.cfg.SubjectPrefix, t), func(m *nats.Msg) { b.receive(t, m) })
		if err != nil {
			b.log.Error("nats subscribe failed: the topic gets no messages from other replicas", "subject", subject(b.cfg.SubjectPrefix, t), "error", err)
			continue
		}
		_ = s.SetPendingLimits(b.cfg.PendingMessages, b.cfg.PendingBytes) // fails only on a closed subscription
		b.subMu.Lock()
		b.subs[t] = s
		b.subMu.Unlock()
	}
}

// release drops the NATS subscription of topic t, keeping its drop count.
func (b *Bus) release(t string) {
	b.subMu.Lock()
	s := b.subs[t]
	if d, err := s.Dropped(); err == nil {
		b.dropSlowReleased.Add(int64(d))
	}
	delete(b.subs, t)
	b.subMu.Unlock()
	if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		b.log.Warn("nats unsubscribe failed", "subject", s.Subject, "error", err)
	}
}

// receive fans a message from another replica out to the local
// subscribers, through the same path as a local publish (each
// subscriber's own backpressure applies). It runs on the subscription's
// goroutine, one per topic, so messages keep their order.
//
// The message comes from the broker (any NATS client may publish on the
// subject), so a panic while delivering it is caught here: it would
// otherwise end the process from nats.go's goroutine. It is logged with
// the stack and the message is lost for this replica.
func (b *Bus) receive(topic string, m *nats.Msg) {
	defer func() {
		if v := recover(); v != nil {
			b.log.Error("panic while delivering a message from the broker; message lost on this replica",
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	b.received.Add(1)
	op := gws.OpcodeText
	switch m.Header.Get(hdrOpcode) {
	case "binary":
		op = gws.OpcodeBinary
	case "text":
	default:
		if !utf8.Valid(m.Data) {
			op = gws.OpcodeBinary
		}
	}
	if sent, err := strconv.ParseInt(m.Header.Get(hdrSent), 10, 64); err == nil {
		b.tel.latency(time.Duration(time.Now().UnixNano() - sent))
	}
	end := b.tel.deliverSpan(topic, m.Header)
	b.hub.Publish(topic, nil, op, m.Data)
	end()
}

// Close stops publishing to NATS, sends the publishes still queued,
// drains the subscriptions and closes the connection, within
// drain_timeout (and a second more for the client's last callbacks).
// Call it after Server.Serve returned: publishes after Close reach only
// local subscribers. It returns the client's drain error, if any, and
// is idempotent.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		b.stopped.Store(true)
		close(b.stop)
		<-b.done
		// Every session has unsubscribed by now; subscriptions left
		// (Close before Serve returned) are drained below and stop
		// counting: keep their drops.
		b.subMu.Lock()
		for t, s := range b.subs {
			if d, err := s.Dropped(); err == nil {
				b.dropSlowReleased.Add(int64(d))
			}
			delete(b.subs, t)
		}
		b.subMu.Unlock()
		if err := b.nc.Drain(); err != nil {
			// Not connected (nothing to drain): close at once.
			b.nc.Close()
		}
		select {
		case <-b.connClosed:
		case <-time.After(b.cfg.DrainTimeout + time.Second):
			b.closeErr = errors.New("nats: connection not closed within drain_timeout")
			b.nc.Close()
		}
		b.closeErr = errors.Join(b.closeErr, b.tel.unregister())
	})
	return b.closeErr
}
