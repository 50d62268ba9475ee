package chaos

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Target is the wsd under test: its public WebSocket base URL
// (ws://host:port) and its admin listener.
type Target struct {
	WS    string
	Admin *Admin
}

// EchoURL returns the echo endpoint's URL.
func (t Target) EchoURL() string { return strings.TrimRight(t.WS, "/") + "/ws/echo" }

// TopicURL returns a topic endpoint's URL.
func (t Target) TopicURL(topic string) string {
	return strings.TrimRight(t.WS, "/") + "/ws/topics/" + topic
}

// TopicConfig shapes the slow-consumer injector: Fast subscribers that
// read at full speed and Slow ones that read at SlowReadRate through a
// SlowRecvBuffer-byte socket buffer, on one topic, while a publisher
// sends Messages numbered messages of Size bytes.
type TopicConfig struct {
	Topic          string
	Fast, Slow     int
	Messages, Size int
	// SlowReadRate in bytes/s (default 2048); SlowRecvBuffer in bytes
	// (default 4096).
	SlowReadRate   float64
	SlowRecvBuffer int
	// PublishRate caps messages per second (0: as fast as the server
	// reads them).
	PublishRate float64
	// Timeout bounds the whole run (default 2 minutes).
	Timeout time.Duration
}

// SubscriberOutcome is what one subscriber observed.
type SubscriberOutcome struct {
	Received int `json:"received"`
	// InOrder: sequence numbers strictly increased (no duplicate, no
	// reordering); for a fast subscriber also no gap.
	InOrder bool `json:"in_order"`
	// CloseCode is the server's close code (0: the connection ended
	// without a close frame, or is still open).
	CloseCode uint16 `json:"close_code"`
	// Ended: the server ended the connection.
	Ended bool `json:"ended"`
}

// TopicOutcome is the result of SlowConsumers.
type TopicOutcome struct {
	Published int
	Fast      []SubscriberOutcome
	Slow      []SubscriberOutcome
}

// subscriber is one reading subscriber and its running tallies.
type subscriber struct {
	conn     *Conn
	fast     bool
	received atomic.Int64
	last     atomic.Int64 // unix nanos of the last message
	inOrder  atomic.Bool
	code     atomic.Uint32
	ended    atomic.Bool
	done     chan struct{}
}

func (s *subscriber) run() {
	defer close(s.done)
	next := uint64(0)
	s.inOrder.Store(true)
	for {
		_, p, err := s.conn.ReadMessage()
		if err != nil {
			var ce *CloseError
			if errors.As(err, &ce) {
				s.code.Store(uint32(ce.Code))
			}
			s.ended.Store(true)
			return
		}
		if len(p) < 8 {
			s.inOrder.Store(false)
			continue
		}
		seq := binary.BigEndian.Uint64(p)
		if seq < next || (s.fast && seq != next) {
			s.inOrder.Store(false)
		}
		next = seq + 1
		s.received.Add(1)
		s.last.Store(time.Now().UnixNano())
	}
}

// SlowConsumers runs the slow-consumer injector and reports what every
// subscriber saw. It waits (through the admin stats) until every
// subscription is registered before publishing, lets the fast
// subscribers finish, then lets the slow ones drain at full speed so
// that, under the drop policy, received + dropped accounts for every
// message.
func SlowConsumers(ctx context.Context, t Target, cfg TopicConfig) (TopicOutcome, error) {
	if cfg.SlowReadRate == 0 {
		cfg.SlowReadRate = 2048
	}
	if cfg.SlowRecvBuffer == 0 {
		cfg.SlowRecvBuffer = 4096
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Size < 8 || cfg.Messages <= 0 || cfg.Topic == "" {
		return TopicOutcome{}, fmt.Errorf("slow consumers: need a topic, messages > 0 and size >= 8")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	base, err := t.Admin.Stats(ctx)
	if err != nil {
		return TopicOutcome{}, err
	}

	var subs []*subscriber
	defer func() {
		for _, s := range subs {
			_ = s.conn.Close()
		}
	}()
	for i := 0; i < cfg.Fast+cfg.Slow; i++ {
		fast := i < cfg.Fast
		var opts []DialOption
		if !fast {
			opts = []DialOption{WithRecvBuffer(cfg.SlowRecvBuffer), WithReadRate(cfg.SlowReadRate)}
		}
		c, err := Dial(ctx, t.TopicURL(cfg.Topic), opts...)
		if err != nil {
			return TopicOutcome{}, fmt.Errorf("subscriber %d: %w", i, err)
		}
		s := &subscriber{conn: c, fast: fast, done: make(chan struct{})}
		s.last.Store(time.Now().UnixNano())
		subs = append(subs, s)
		go s.run()
	}
	pub, err := Dial(ctx, t.TopicURL(cfg.Topic))
	if err != nil {
		return TopicOutcome{}, fmt.Errorf("publisher: %w", err)
	}
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); _, _, _ = pub.ReadUntilClose(cfg.Timeout) }() // answers pings
	defer func() {
		_ = pub.WriteClose(1000, "")
		select {
		case <-pubDone:
		case <-time.After(2 * time.Second):
		}
		_ = pub.Close()
		<-pubDone
	}()
	want := base.Subscribers + cfg.Fast + cfg.Slow + 1
	if err := Poll(ctx, 10*time.Second, 50*time.Millisecond, func() error {
		st, err := t.Admin.Stats(ctx)
		if err != nil {
			return err
		}
		if st.Subscribers < want {
			return fmt.Errorf("%d of %d subscriptions registered", st.Subscribers, want)
		}
		return nil
	}); err != nil {
		return TopicOutcome{}, err
	}

	var lim *rate.Limiter
	if cfg.PublishRate > 0 {
		lim = rate.NewLimiter(rate.Limit(cfg.PublishRate), 1)
	}
	msg := make([]byte, cfg.Size)
	out := TopicOutcome{}
	for i := 0; i < cfg.Messages; i++ {
		if lim != nil {
			if err := lim.Wait(ctx); err != nil {
				return out, fmt.Errorf("publish: %w", err)
			}
		}
		binary.BigEndian.PutUint64(msg, uint64(i))
		if err := pub.WriteMessage(OpBinary, msg); err != nil {
			return out, fmt.Errorf("publish message %d: %w", i, err)
		}
		out.Published++
	}

	// Fast subscribers should get everything; a subscriber that falls
	// behind under the drop policy never will, so "done" is: complete,
	// ended, or idle for 3s.
	idle := func(s *subscriber) bool {
		return s.ended.Load() || s.received.Load() >= int64(cfg.Messages) ||
			time.Since(time.Unix(0, s.last.Load())) > 3*time.Second
	}
	published := time.Now()
	fastErr := Poll(ctx, cfg.Timeout, 50*time.Millisecond, func() error {
		for i, s := range subs[:cfg.Fast] {
			if !idle(s) || time.Since(published) < 100*time.Millisecond {
				return fmt.Errorf("fast subscriber %d has %d of %d", i, s.received.Load(), cfg.Messages)
			}
		}
		return nil
	})
	// Slow subscribers now drain at full speed until they are done too.
	for _, s := range subs[cfg.Fast:] {
		s.conn.SetReadRate(0)
	}
	slowErr := Poll(ctx, cfg.Timeout, 100*time.Millisecond, func() error {
		for i, s := range subs[cfg.Fast:] {
			if !idle(s) {
				return fmt.Errorf("slow subscriber %d still receiving (%d of %d)", i, s.received.Load(), cfg.Messages)
			}
		}
		return nil
	})
	// Snapshot before closing: our own close must not count as the
	// server ending the connection.
	for _, s := range subs {
		o := SubscriberOutcome{Received: int(s.received.Load()), InOrder: s.inOrder.Load(),
			CloseCode: uint16(s.code.Load()), Ended: s.ended.Load()}
		if s.fast {
			out.Fast = append(out.Fast, o)
		} else {
			out.Slow = append(out.Slow, o)
		}
	}
	// The readers are still running: send our close frame and let each
	// reader see the server's answer before dropping the socket.
	for _, s := range subs {
		if !s.ended.Load() {
			_ = s.conn.WriteClose(1000, "")
		}
	}
	for _, s := range subs {
		select {
		case <-s.done:
		case <-time.After(2 * time.Second):
		}
		_ = s.conn.Close()
		<-s.done
	}
	return out, errors.Join(fastErr, slowErr)
}

// Poll calls f every interval until it returns nil or total elapses; it
// returns f's last error, wrapped, on timeout.
func Poll(ctx context.Context, total, every time.Duration, f func() error) error {
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", total, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(every):
		}
	}
}
