package service

import (
	"context"
	"sync"

	"github.com/lxzan/gws"
)

// Bus carries topic messages to subscribers. The in-process Hub delivers
// within one replica; a broker-backed Bus (natsbus: NATS) carries
// publishes between replicas by implementing the same three methods,
// and optionally ContextPublisher and BusStatser, without touching
// session code. Passing a nil Bus to WithBus keeps the in-process Hub.
type Bus interface {
	// Subscribe adds sub to topic. The returned function removes it; it
	// is idempotent.
	Subscribe(topic string, sub Subscriber) (unsubscribe func())
	// Publish delivers a message to every subscriber of topic except
	// from. It must not block on any subscriber.
	Publish(topic string, from Subscriber, opcode gws.Opcode, payload []byte)
	// Counts returns the number of topics and of subscriptions.
	Counts() (topics, subscribers int)
}

// ContextPublisher is an optional interface of a Bus: the Server calls
// PublishContext instead of Publish when the Bus implements it, with the
// publishing session's context (which carries its ws.session span), so
// a broker-backed Bus can propagate the trace context to the replicas
// that deliver the message. It must not block, like Publish.
type ContextPublisher interface {
	PublishContext(ctx context.Context, topic string, from Subscriber, opcode gws.Opcode, payload []byte)
}

// BusStats is the state of a Bus's link to other replicas, reported in
// /debug/stats. The in-process Hub has no link: the Server reports it
// as connected with no broker subscriptions and zero totals. The zero
// value is a disconnected Bus with nothing counted.
type BusStats struct {
	// Connected is true while the broker connection is up.
	Connected bool
	// Subscriptions is the number of broker subscriptions: one per topic
	// with at least one local subscriber. A Bus may apply changes in the
	// background: it follows Counts shortly, not atomically.
	Subscriptions int
	// Totals since start: messages handed to the broker, messages
	// received from it (other replicas' publishes), and messages lost on
	// the broker path (published while disconnected or with the publish
	// queue full, or discarded by the broker client as a slow consumer).
	Published, Received, Dropped int64
}

// BusStatser is an optional interface of a Bus that links replicas: the
// Server reads it for /debug/stats. It must be cheap and must not block.
type BusStatser interface {
	BusStats() BusStats
}

// ValidTopic reports whether t is a valid topic name: 1–128 characters
// of [A-Za-z0-9._-], other than "." and "..", which are path segments to
// every URL resolver and proxy on the way (a proxy may forward
// /ws/topics/.. as /ws/). The Server refuses other names with 400, so a
// Bus only ever sees valid ones.
func ValidTopic(t string) bool {
	if len(t) == 0 || len(t) > 128 || t == "." || t == ".." {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Subscriber receives fan-out messages from a Bus; wsd's topic sessions
// implement it.
type Subscriber interface {
	// Deliver queues m for sending. It must not block: a subscriber that
	// cannot keep up drops or closes itself (backpressure.slow_consumer).
	Deliver(m *Outbound)
}

// Outbound is one published message: its frame is encoded once, on the
// first delivery, and shared by every subscriber's write queue. A Bus
// creates one with NewOutbound per publish and calls Release after
// delivering it to every local subscriber. The zero value has no frame
// to share and must not be delivered: use NewOutbound.
type Outbound struct {
	// Opcode and Payload are the message; Payload must not change.
	Opcode  gws.Opcode
	Payload []byte
	b       *gws.Broadcaster
}

// NewOutbound wraps a message for delivery to many subscribers.
func NewOutbound(opcode gws.Opcode, payload []byte) *Outbound {
	return &Outbound{Opcode: opcode, Payload: payload, b: gws.NewBroadcaster(opcode, payload)}
}

// Release frees the shared frame once every queued write has finished.
// Call it once, after the last Deliver.
func (m *Outbound) Release() { _ = m.b.Close() }

// Hub is the in-process Bus. The zero value is not usable: use NewHub.
type Hub struct {
	mu     sync.RWMutex
	topics map[string]*topicSubs
	subs   int
}

type topicSubs struct {
	mu   sync.RWMutex
	subs map[Subscriber]struct{}
}

// NewHub returns an empty in-process Bus.
func NewHub() *Hub { return &Hub{topics: make(map[string]*topicSubs)} }

// Subscribe implements Bus. Subscriptions change rarely compared with
// publishes, so they take the hub's write lock; that also makes deleting
// an emptied topic race-free.
func (h *Hub) Subscribe(topic string, sub Subscriber) func() {
	h.mu.Lock()
	t := h.topics[topic]
	if t == nil {
		t = &topicSubs{subs: make(map[Subscriber]struct{})}
		h.topics[topic] = t
	}
	t.mu.Lock()
	t.subs[sub] = struct{}{}
	t.mu.Unlock()
	h.subs++
	h.mu.Unlock()

	var once sync.Once
	return func() { once.Do(func() { h.unsubscribe(topic, t, sub) }) }
}

func (h *Hub) unsubscribe(topic string, t *topicSubs, sub Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t.mu.Lock()
	delete(t.subs, sub)
	empty := len(t.subs) == 0
	t.mu.Unlock()
	h.subs--
	if empty && h.topics[topic] == t {
		delete(h.topics, topic)
	}
}

// Publish implements Bus. Delivery only queues (Subscriber.Deliver never
// blocks), so holding the topic's read lock while iterating is cheap and
// lets subscriptions change concurrently on other topics.
func (h *Hub) Publish(topic string, from Subscriber, opcode gws.Opcode, payload []byte) {
	h.mu.RLock()
	t := h.topics[topic]
	h.mu.RUnlock()
	if t == nil {
		return
	}
	m := NewOutbound(opcode, payload)
	t.mu.RLock()
	for sub := range t.subs {
		if sub != from {
			sub.Deliver(m)
		}
	}
	t.mu.RUnlock()
	m.Release()
}

// Counts implements Bus.
func (h *Hub) Counts() (topics, subscribers int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.topics), h.subs
}
