package natsbus

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

// seq is "<prefix> 1" ... "<prefix> n".
func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s %d", prefix, i+1)
	}
	return out
}

// TestAcrossReplicas: a message published on A reaches the subscribers
// of its topic on A and on B exactly once each, in the publisher's
// order, and never the publisher itself.
func TestAcrossReplicas(t *testing.T) {
	r := startRoom(t)

	const n = 500
	want := seq("msg", n)
	for _, m := range want {
		r.pub.send(t, m)
	}
	waitTexts(t, r.remoteSub, "subscriber on B", want)
	waitTexts(t, r.localSub, "subscriber on A", want)

	// A reply from B's side travels back through the broker on the same
	// connection as any echo of A's own messages would have: once A has
	// it, an echo (a duplicate) would have been received before it.
	r.remoteSub.send(t, "back")
	waitTexts(t, r.localSub, "subscriber on A", append(want, "back"))
	waitTexts(t, r.pub, "publisher on A", []string{"back"})
	if got := r.remoteSub.texts(); len(got) != n {
		t.Fatalf("subscriber on B received %d messages, want exactly %d (its own reply must not come back)", len(got), n)
	}
	stA, stB := r.a.srv.Stats(), r.b.srv.Stats()
	if stA.BusReceivedTotal != 1 {
		t.Fatalf("A received %d messages from the broker, want exactly 1 (B's reply): A's own messages came back", stA.BusReceivedTotal)
	}
	if stA.BusDroppedTotal != 0 || stB.BusDroppedTotal != 0 {
		t.Fatalf("dropped totals A %d B %d with the broker up, want 0", stA.BusDroppedTotal, stB.BusDroppedTotal)
	}
	if probes := int64(r.localSub.probes()); stA.BusPublishedTotal != n+probes || stB.BusPublishedTotal != 1 {
		t.Fatalf("published totals A %d (want %d messages + %d probes) B %d (want 1)", stA.BusPublishedTotal, n, probes, stB.BusPublishedTotal)
	}
	if !stA.BusConnected || !stB.BusConnected || stA.BusSubscriptions != 1 || stB.BusSubscriptions != 1 {
		t.Fatalf("A %+v B %+v: want both connected with 1 broker subscription", stA, stB)
	}
}

// TestTopicsWithDots: topics that differ only around dots ("room",
// "room.one", "...", ".a", "room_-one", the encoding of "room.one") are
// separate subjects: each subscriber gets its own topic's messages only.
// ("." and ".." are valid names too, but net/http redirects such paths
// before wsd sees them; the subject tests cover them.)
func TestTopicsWithDots(t *testing.T) {
	ns := startNATS(t, -1)
	a := startReplica(t, "A", testBusConfig(ns))
	b := startReplica(t, "B", testBusConfig(ns))
	topics := []string{"room", "room.one", "...", ".a", "room_-one", "a."}
	pubs := map[string]*subscriber{}
	subs := map[string]*subscriber{}
	for _, tp := range topics {
		pubs[tp] = subscribe(t, a, tp)
		subs[tp] = subscribe(t, b, tp)
	}
	for _, tp := range topics {
		link(t, pubs[tp], subs[tp])
	}
	for _, tp := range topics {
		pubs[tp].send(t, "for "+tp)
	}
	for _, tp := range topics {
		waitTexts(t, subs[tp], "subscriber of "+tp, []string{"for " + tp})
	}
	// One more round trip on every topic: a stray message for another
	// topic would have arrived before it.
	for _, tp := range topics {
		pubs[tp].send(t, "end "+tp)
	}
	for _, tp := range topics {
		waitTexts(t, subs[tp], "subscriber of "+tp, []string{"for " + tp, "end " + tp})
	}
	if st := b.srv.Stats(); st.BusSubscriptions != len(topics) {
		t.Fatalf("B has %d broker subscriptions, want %d (one per topic)", st.BusSubscriptions, len(topics))
	}
}

// TestBrokerRestart: when the NATS server is replaced by a new one on
// the same port, both replicas reconnect, resubscribe every live topic
// and delivery resumes.
func TestBrokerRestart(t *testing.T) {
	ns := startNATS(t, -1)
	port := natsPort(ns)
	a := startReplica(t, "A", testBusConfig(ns))
	b := startReplica(t, "B", testBusConfig(ns))
	pub := subscribe(t, a, "room")
	sub := subscribe(t, b, "room")
	link(t, pub, sub)
	pub.send(t, "before")
	waitTexts(t, sub, "subscriber on B", []string{"before"})

	stopNATS(ns)
	for _, r := range []*replica{a, b} {
		waitStats(t, r, "bus_connected false", func(st service.Stats) bool { return !st.BusConnected })
	}
	startNATS(t, port)
	for _, r := range []*replica{a, b} {
		waitStats(t, r, "bus_connected true with 1 subscription", func(st service.Stats) bool {
			return st.BusConnected && st.BusSubscriptions == 1
		})
	}
	// The new server knows B's subscription only if B sent it again.
	link(t, pub, sub)
	pub.send(t, "after")
	waitTexts(t, sub, "subscriber on B", []string{"before", "after"})
	if n := b.bus.reconnects.Load(); n < 1 {
		t.Fatalf("B counted %d reconnects, want at least 1", n)
	}
}

// TestBrokerGone: with no broker, local delivery goes on, bus_connected
// is false, /readyz stays 200, and every message published meanwhile is
// counted as lost for the other replicas.
func TestBrokerGone(t *testing.T) {
	r := startRoom(t)

	stopNATS(r.ns)
	before := waitStats(t, r.a, "bus_connected false", func(st service.Stats) bool { return !st.BusConnected })
	const n = 50
	want := seq("offline", n)
	for _, m := range want {
		r.pub.send(t, m)
	}
	waitTexts(t, r.localSub, "subscriber on A", want)
	waitStats(t, r.a, fmt.Sprintf("bus_dropped_total %d", before.BusDroppedTotal+n), func(st service.Stats) bool {
		return st.BusDroppedTotal == before.BusDroppedTotal+n
	})
	if st := r.a.srv.Stats(); st.BusPublishedTotal != before.BusPublishedTotal || st.BusConnected {
		t.Fatalf("offline: published total %d -> %d, connected %v: want unchanged and false", before.BusPublishedTotal, st.BusPublishedTotal, st.BusConnected)
	}
	resp, err := http.Get("http://" + r.a.srv.AdminAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz answered %d with the broker gone, want 200 (local delivery works)", resp.StatusCode)
	}
	if got := r.remoteSub.texts(); len(got) != 0 {
		t.Fatalf("subscriber on B received %q with no broker", got)
	}
}

// TestSubscriptionRelease: one broker subscription per topic while the
// topic has a local subscriber; back to zero when the last one leaves.
func TestSubscriptionRelease(t *testing.T) {
	ns := startNATS(t, -1)
	base := ns.NumSubscriptions() // the server's own
	a := startReplica(t, "A", testBusConfig(ns))
	s1 := subscribe(t, a, "room")
	s2 := subscribe(t, a, "room")
	s3 := subscribe(t, a, "other")
	waitStats(t, a, "2 broker subscriptions", func(st service.Stats) bool { return st.BusSubscriptions == 2 })
	serverSubs := func() uint32 { return ns.NumSubscriptions() - base }
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		if n := serverSubs(); n != 2 {
			return fmt.Errorf("nats-server has %d subscriptions, want 2", n)
		}
		return nil
	})

	closeSub := func(s *subscriber) {
		_ = s.conn.NetConn().Close()
		<-s.Closed()
	}
	closeSub(s1)
	waitStats(t, a, "1 subscriber of room left", func(st service.Stats) bool { return st.Subscribers == 2 })
	if st := a.srv.Stats(); st.BusSubscriptions != 2 {
		t.Fatalf("%d broker subscriptions with both topics still subscribed, want 2", st.BusSubscriptions)
	}
	closeSub(s2)
	closeSub(s3)
	waitStats(t, a, "0 broker subscriptions", func(st service.Stats) bool {
		return st.Subscribers == 0 && st.BusSubscriptions == 0
	})
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		if n := serverSubs(); n != 0 {
			return fmt.Errorf("nats-server has %d subscriptions after the last subscriber left, want 0", n)
		}
		return nil
	})
}

// gatedSubscriber records what it is given; the message "block" holds
// its Deliver (and so the topic's NATS subscription goroutine) until the
// gate is opened, which only a test double can do: wsd's sessions never
// block in Deliver.
type gatedSubscriber struct {
	gate chan struct{}
	mu   sync.Mutex
	got  []string
}

func (g *gatedSubscriber) Deliver(m *service.Outbound) {
	g.mu.Lock()
	g.got = append(g.got, string(m.Payload))
	g.mu.Unlock()
	if string(m.Payload) == "block" {
		<-g.gate
	}
}

func (g *gatedSubscriber) messages() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.got...)
}

// TestSlowConsumerBounded: messages from other replicas that wait for
// local fan-out are bounded by pending_messages; the excess is dropped
// and counted in bus_dropped_total, never buffered without limit, and
// what is delivered keeps its order.
func TestSlowConsumerBounded(t *testing.T) {
	ns := startNATS(t, -1)
	a := startReplica(t, "A", testBusConfig(ns))
	cfg := testBusConfig(ns)
	cfg.PendingMessages = 5
	b := startReplica(t, "B", cfg)
	g := &gatedSubscriber{gate: make(chan struct{})}
	unsub := b.bus.Subscribe("room", g)
	defer unsub()
	opened := false
	defer func() {
		if !opened {
			close(g.gate)
		}
	}()
	i := 0
	wstest.CheckFor(t, wait, 20*time.Millisecond, func() error {
		if len(g.messages()) > 0 {
			return nil
		}
		i++
		a.bus.Publish("room", nil, gws.OpcodeText, []byte(fmt.Sprintf("probe %d", i)))
		return fmt.Errorf("no probe delivered after %d", i)
	})
	// Probes still in flight arrive before "sync" (one publisher's order).
	a.bus.Publish("room", nil, gws.OpcodeText, []byte("sync"))
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		if got := g.messages(); got[len(got)-1] != "sync" {
			return fmt.Errorf("sync not delivered yet: %q", got)
		}
		return nil
	})
	probes := len(g.messages())

	const n = 200
	a.bus.Publish("room", nil, gws.OpcodeText, []byte("block"))
	for k := 1; k <= n; k++ {
		a.bus.Publish("room", nil, gws.OpcodeText, []byte(strconv.Itoa(k)))
	}
	// Blocked, B holds at most pending_messages (+1 in nats.go's
	// accounting); the rest must be dropped.
	waitStats(t, b, fmt.Sprintf("at least %d dropped", n-cfg.PendingMessages-1), func(st service.Stats) bool {
		return st.BusDroppedTotal >= int64(n-cfg.PendingMessages-1)
	})
	close(g.gate)
	opened = true
	var delivered []string
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		delivered = g.messages()[probes+1:]
		st := b.srv.Stats()
		if int64(len(delivered))+st.BusDroppedTotal != n {
			return fmt.Errorf("delivered %d + dropped %d, want %d", len(delivered), st.BusDroppedTotal, n)
		}
		return nil
	})
	last := 0
	for _, m := range delivered {
		k, _ := strconv.Atoi(m)
		if k <= last {
			t.Fatalf("delivered %q after %d: order broken (%q)", m, last, delivered)
		}
		last = k
	}
	if st := b.srv.Stats(); st.BusDroppedTotal < n-int64(cfg.PendingMessages)-1 || len(delivered) > cfg.PendingMessages+1 {
		t.Fatalf("delivered %d, dropped %d: want at most %d held while blocked", len(delivered), st.BusDroppedTotal, cfg.PendingMessages+1)
	}
}

// TestStartsWithoutBroker: a replica whose broker is not up yet serves
// its local subscribers, counts what the others miss, and joins the
// broker once it appears (connect retried with backoff, subscriptions
// sent on connect).
func TestStartsWithoutBroker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cfg := DefaultConfig()
	cfg.URL = fmt.Sprintf("nats://127.0.0.1:%d", port)
	cfg.ReconnectWait, cfg.ReconnectWaitMax = 20*time.Millisecond, 100*time.Millisecond
	a := startReplica(t, "A", cfg)
	pub := subscribe(t, a, "room")
	local := subscribe(t, a, "room")
	pub.send(t, "early")
	waitTexts(t, local, "subscriber on A", []string{"early"})
	st := waitStats(t, a, "1 dropped", func(st service.Stats) bool { return st.BusDroppedTotal == 1 })
	if st.BusConnected {
		t.Fatalf("connected with no broker: %+v", st)
	}

	ns := startNATS(t, port)
	b := startReplica(t, "B", testBusConfig(ns))
	remote := subscribe(t, b, "room")
	waitStats(t, a, "connected with 1 subscription", func(st service.Stats) bool {
		return st.BusConnected && st.BusSubscriptions == 1
	})
	link(t, pub, remote)
	pub.send(t, "late")
	waitTexts(t, remote, "subscriber on B", []string{"late"})
}
