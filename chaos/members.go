package chaos

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// BusStats is the cross-replica bus part of /debug/stats (README,
// section Running several replicas).
type BusStats struct {
	// Connected: the replica is connected to the broker now.
	Connected bool `json:"bus_connected"`
	// Subscriptions: broker subscriptions, one per topic with a local
	// subscriber.
	Subscriptions int `json:"bus_subscriptions"`
	// Published, Received and Dropped count messages sent to the broker,
	// taken from it, and lost between replicas (broker unreachable,
	// queues full).
	Published int64 `json:"bus_published_total"`
	Received  int64 `json:"bus_received_total"`
	Dropped   int64 `json:"bus_dropped_total"`
}

// BusStats fetches the bus fields of /debug/stats.
func (a *Admin) BusStats(ctx context.Context) (BusStats, error) {
	var st BusStats
	err := a.getJSON(ctx, "/debug/stats", &st)
	return st, err
}

// memberMsgLen is a Member message: publisher id (4 bytes) and sequence
// number (8 bytes), big-endian.
const memberMsgLen = 12

// Member is one connection to a topic in a multi-replica scenario: it
// publishes numbered messages tagged with its ID and records, per
// publisher, the sequence numbers it receives in arrival order, so a test
// can prove once-only, per-publisher-ordered delivery and count exactly
// what was lost. It can move to another replica (Reconnect) and keep its
// record, as a client does when its replica shuts down.
type Member struct {
	// ID tags the messages it publishes.
	ID uint32

	mu      sync.Mutex
	conn    *Conn
	seqs    map[uint32][]uint64
	foreign int
	code    uint16
	ended   bool
	done    chan struct{}
	moves   int
}

// JoinTopic connects a member with id to the topic URL (a
// Target.TopicURL) and starts its reader. The connection lives within
// ctx.
func JoinTopic(ctx context.Context, url string, id uint32) (*Member, error) {
	m := &Member{ID: id, seqs: map[uint32][]uint64{}}
	if err := m.connect(ctx, url); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Member) connect(ctx context.Context, url string) error {
	c, err := Dial(ctx, url)
	if err != nil {
		return fmt.Errorf("member %d: %w", m.ID, err)
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.conn, m.done, m.ended, m.code = c, done, false, 0
	m.mu.Unlock()
	go m.read(c, done)
	return nil
}

func (m *Member) read(c *Conn, done chan struct{}) {
	defer close(done)
	for {
		_, p, err := c.ReadMessage()
		if err != nil {
			var ce *CloseError
			m.mu.Lock()
			if errors.As(err, &ce) {
				m.code = ce.Code
			}
			m.ended = true
			m.mu.Unlock()
			return
		}
		m.mu.Lock()
		if len(p) != memberMsgLen {
			m.foreign++
		} else {
			pub := binary.BigEndian.Uint32(p)
			m.seqs[pub] = append(m.seqs[pub], binary.BigEndian.Uint64(p[4:]))
		}
		m.mu.Unlock()
	}
}

// Publish sends message seq tagged with the member's ID.
func (m *Member) Publish(seq uint64) error {
	var p [memberMsgLen]byte
	binary.BigEndian.PutUint32(p[:], m.ID)
	binary.BigEndian.PutUint64(p[4:], seq)
	m.mu.Lock()
	c := m.conn
	m.mu.Unlock()
	if err := c.WriteMessage(OpBinary, p[:]); err != nil {
		return fmt.Errorf("member %d: publish %d: %w", m.ID, seq, err)
	}
	return nil
}

// Seqs returns the sequence numbers received from publisher pub, in
// arrival order.
func (m *Member) Seqs(pub uint32) []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]uint64(nil), m.seqs[pub]...)
}

// Foreign returns how many received messages were not Member messages.
func (m *Member) Foreign() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.foreign
}

// Ended reports whether the server ended the current connection, and
// its close code (0: no close frame).
func (m *Member) Ended() (bool, uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ended, m.code
}

// Moves returns how many times Reconnect moved the member.
func (m *Member) Moves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.moves
}

// Reconnect connects the member to url once the server has ended its
// connection (see Ended), keeping what it received so far. It fails
// when the connection is still open or the dial fails.
func (m *Member) Reconnect(ctx context.Context, url string) error {
	m.mu.Lock()
	ended, old := m.ended, m.conn
	m.mu.Unlock()
	if !ended {
		return fmt.Errorf("member %d: reconnect while connected", m.ID)
	}
	_ = old.Close()
	if err := m.connect(ctx, url); err != nil {
		return err
	}
	m.mu.Lock()
	m.moves++
	m.mu.Unlock()
	return nil
}

// Leave closes the connection gracefully (close 1000, the server's
// answer awaited up to wait) and waits for the reader.
func (m *Member) Leave(wait time.Duration) {
	m.mu.Lock()
	c, done, ended := m.conn, m.done, m.ended
	m.mu.Unlock()
	if !ended {
		_ = c.WriteClose(1000, "")
		select {
		case <-done:
		case <-time.After(wait):
		}
	}
	_ = c.Close()
	<-done
}

// Delivery summarises what one member received from one publisher.
type Delivery struct {
	// Total is every message received; InRange those with lo <= seq < hi.
	Total, InRange int
	// Ordered: strictly increasing sequence numbers (no duplicate, no
	// reordering).
	Ordered bool
}

// DeliveryOf summarises seqs (a Member.Seqs result) for the range
// [lo, hi).
func DeliveryOf(seqs []uint64, lo, hi uint64) Delivery {
	d := Delivery{Total: len(seqs), Ordered: true}
	for i, s := range seqs {
		if i > 0 && s <= seqs[i-1] {
			d.Ordered = false
		}
		if s >= lo && s < hi {
			d.InRange++
		}
	}
	return d
}
