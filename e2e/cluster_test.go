//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"

	"github.com/wsd-dev/wsd/chaos"
)

// TestClusterNATSContainer: the natscontainer module's contract. The
// server accepts clients once Run returns, InternalURL names it by its
// network alias, and Stop then Start is an outage after which the
// monitoring endpoints answer again on the refreshed ports.
func TestClusterNATSContainer(t *testing.T) {
	requireDocker(t)
	ctx := t.Context()
	n := startNATS(t, newNetwork(ctx, t), "broker")
	if got := n.InternalURL(); got != "nats://broker:4222" {
		t.Errorf("InternalURL %q, want nats://broker:4222 (the network alias)", got)
	}
	if _, err := n.Subscriptions(ctx); err != nil {
		t.Errorf("monitoring after Run: %v", err)
	}
	if err := n.Stop(ctx, nil); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := n.Connections(ctx); err == nil {
		t.Error("monitoring answers while the server is stopped: Stop is no outage")
	}
	if err := n.Start(ctx); err != nil {
		t.Fatalf("start again: %v", err)
	}
	if c, err := n.Connections(ctx); err != nil || c != 0 {
		t.Errorf("after Start: %d connections, %v; want 0, nil (monitoring on the refreshed port %s)", c, err, n.MonitorURL())
	}
}

// Scenario cluster 1: cross-replica delivery. Four members on each
// replica, two of them publishing on each: every member receives every
// other publisher's messages once, in per-publisher order, whichever
// replica they were published on; the bus counters match the traffic.
func TestClusterCrossReplicaDelivery(t *testing.T) {
	const perReplica, msgs = 4, 200
	c := startCluster(t, "cluster-cross-replica",
		fmt.Sprintf("%d members per replica on one topic, 2 publishers per replica, %d messages each.", perReplica, msgs),
		clusterOpts{conns: perReplica})
	topic := "cluster-fanout"
	ma, mb, _ := c.joinBoth(topic, perReplica, perReplica)
	busA, busB := c.bus(c.a), c.bus(c.b)
	pubs := []*chaos.Member{ma[0], ma[1], mb[0], mb[1]}
	c.publish(pubs, 0, msgs, 1000)
	all := slices.Concat(ma, mb)
	c.expectDelivery("every message once, in per-publisher order, on both replicas", all, pubs, 0, msgs, msgs, 20*time.Second)
	// Each replica sent its own two publishers' messages to the broker
	// and received the other's: one broker message per published one,
	// whatever the number of remote subscribers.
	var a2, b2 chaos.BusStats
	err := chaos.Poll(c.ctx, 10*time.Second, 100*time.Millisecond, func() error {
		a2, b2 = c.bus(c.a), c.bus(c.b)
		if a2.Received-busA.Received != 2*msgs || b2.Received-busB.Received != 2*msgs {
			return fmt.Errorf("received a %d b %d", a2.Received-busA.Received, b2.Received-busB.Received)
		}
		return nil
	})
	c.check("bus counters: one broker message per published message", err == nil &&
		a2.Published-busA.Published == 2*msgs && b2.Published-busB.Published == 2*msgs && a2.Dropped == busA.Dropped && b2.Dropped == busB.Dropped,
		fmt.Sprintf("published %d, received %d, dropped 0 on each replica", 2*msgs, 2*msgs),
		"a: published %d received %d dropped %d; b: published %d received %d dropped %d",
		a2.Published-busA.Published, a2.Received-busA.Received, a2.Dropped-busA.Dropped,
		b2.Published-busB.Published, b2.Received-busB.Received, b2.Dropped-busB.Dropped)
	leave(all)
	c.finish(20*time.Second, 0, topic)
}

// Scenario cluster 2: the broker stops, then comes back. During the
// outage both replicas report bus_connected false, stay ready and keep
// delivering locally; every message that could not cross is counted in
// the publishing replica's bus_dropped_total; after the restart both
// reconnect and resubscribe within recoverWithin and cross-replica
// delivery resumes.
func TestClusterBrokerRestart(t *testing.T) {
	const perReplica, n = 3, 50
	c := startCluster(t, "cluster-broker-restart",
		fmt.Sprintf("%d members per replica, one publisher each; NATS stopped, %d messages per publisher during the outage, NATS started again.", perReplica, n),
		clusterOpts{conns: perReplica})
	topic := "cluster-outage"
	ma, mb, interest := c.joinBoth(topic, perReplica, perReplica)
	pubs := []*chaos.Member{ma[0], mb[0]}
	all := slices.Concat(ma, mb)
	c.publish(pubs, 0, n, 500)
	c.expectDelivery("before: every message on both replicas", all, pubs, 0, n, n, 15*time.Second)

	c.res.Fault("NATS stopped (SIGTERM)")
	stopTimeout := 5 * time.Second
	if err := c.nats.Stop(c.ctx, &stopTimeout); err != nil {
		c.fatal("stop nats: %v", err)
	}
	for _, r := range []*replica{c.a, c.b} {
		err := c.waitBus(r, false, 10*time.Second)
		c.check("outage: replica "+r.name+" reports bus_connected false", err == nil, "false within 10s", "%s", errText(err))
		err = r.target.Admin.Readyz(c.ctx)
		c.check("outage: replica "+r.name+" stays ready", err == nil, "/readyz 200", "%s", errText(err))
	}
	dropA, dropB := c.bus(c.a).Dropped, c.bus(c.b).Dropped
	c.publish(pubs, n, 2*n, 500)
	c.expectDelivery("outage: local delivery continues on a", ma, ma[:1], n, 2*n, n, 15*time.Second)
	c.expectDelivery("outage: local delivery continues on b", mb, mb[:1], n, 2*n, n, 15*time.Second)
	var da, db int64
	err := chaos.Poll(c.ctx, 5*time.Second, 50*time.Millisecond, func() error {
		da, db = c.bus(c.a).Dropped-dropA, c.bus(c.b).Dropped-dropB
		if da != n || db != n {
			return fmt.Errorf("dropped a %d b %d", da, db)
		}
		return nil
	})
	c.check("outage: every message that could not cross is counted by its replica", err == nil,
		fmt.Sprintf("bus_dropped_total +%d on a and on b", n), "a +%d, b +%d", da, db)

	c.res.Fault("NATS started again")
	restarted := time.Now()
	if err := c.nats.Start(c.ctx); err != nil {
		c.fatal("start nats: %v", err)
	}
	took := c.expectRecovery("recovery: both replicas reconnected and resubscribed", restarted, interest)
	c.res.Note("cross-replica delivery resumed %.1fs after NATS was started again", took.Seconds())
	c.publish(pubs, 2*n, 3*n, 500)
	c.expectDelivery("after: every message on both replicas", all, pubs, 2*n, 3*n, n, 15*time.Second)
	// The accounting over the whole run: what a remote member lacks is
	// exactly what its publisher's replica counted as dropped.
	lostOK, got := true, ""
	for _, pair := range []struct {
		pub   *chaos.Member
		recv  []*chaos.Member
		count int64
	}{{ma[0], mb, da}, {mb[0], ma, db}} {
		for _, m := range pair.recv {
			d := chaos.DeliveryOf(m.Seqs(pair.pub.ID), 0, 3*n)
			lost := int64(3*n - d.InRange)
			if lost != pair.count || !d.Ordered {
				lostOK = false
				got += fmt.Sprintf("member %d lacks %d of %d's messages (ordered %v), dropped %d; ", m.ID, lost, pair.pub.ID, d.Ordered, pair.count)
			}
		}
	}
	c.check("every lost message explained by bus_dropped_total", lostOK, "lost = dropped for every remote member", "%s", orOK(got))
	leave(all)
	c.finish(20*time.Second, 0, topic)
}

// Scenario cluster 3: replica a's link to NATS (through Toxiproxy)
// gets slow, then is cut (timeout toxic: no data, connection closed after
// 1s, reconnects stall). Replica b is unaffected throughout; a degrades
// to local delivery while cut and recovers once the toxic is gone.
func TestClusterBrokerLinkFaults(t *testing.T) {
	const perReplica, n = 3, 30
	c := startCluster(t, "cluster-broker-link",
		fmt.Sprintf("%d members per replica, one publisher each; a↔NATS latency 300ms, then cut (timeout toxic), then restored; %d messages per publisher per phase.", perReplica, n),
		clusterOpts{conns: perReplica, toxiproxy: true})
	proxy, err := c.tox.Proxy("nats")
	if err != nil {
		c.fatal("%v", err)
	}
	topic := "cluster-link"
	ma, mb, interest := c.joinBoth(topic, perReplica, perReplica)
	pubs := []*chaos.Member{ma[0], mb[0]}
	all := slices.Concat(ma, mb)
	addToxic := func(name, typ, stream string, attrs toxiclient.Attributes) {
		t.Helper()
		if _, err := proxy.AddToxic(name, typ, stream, 1, attrs); err != nil {
			c.fatal("add toxic %s: %v", name, err)
		}
		c.res.Fault("a↔NATS: %s %s %s", typ, stream, attrText(attrs))
	}

	// Latency: slower, never lossy, and b is not held up.
	addToxic("latency-up", "latency", "upstream", toxiclient.Attributes{"latency": 300})
	addToxic("latency-down", "latency", "downstream", toxiclient.Attributes{"latency": 300})
	busA := c.bus(c.a)
	c.publish(pubs, 0, n, 200)
	c.expectDelivery("latency: every message on both replicas", all, pubs, 0, n, n, 20*time.Second)
	c.check("latency: a stays connected, nothing dropped", c.bus(c.a).Connected && c.bus(c.a).Dropped == busA.Dropped,
		"bus_connected, bus_dropped_total unchanged", "%+v", c.bus(c.a))
	if err := c.tox.ResetToxics(); err != nil {
		c.fatal("%v", err)
	}
	if proxy, err = c.tox.Proxy("nats"); err != nil {
		c.fatal("%v", err)
	}

	// Cut: a loses the broker, b keeps it. Both directions: no data
	// either way, the connection closed after 1s, and every reconnect
	// through the proxy stalls the same way.
	addToxic("cut-up", "timeout", "upstream", toxiclient.Attributes{"timeout": 1000})
	addToxic("cut-down", "timeout", "downstream", toxiclient.Attributes{"timeout": 1000})
	// The toxic acts on data: a message from a makes the cut visible at
	// once instead of at the next client ping.
	probe := c.join(c.a, topic, 900, 1)[0]
	err = chaos.Poll(c.ctx, 15*time.Second, 100*time.Millisecond, func() error {
		_ = probe.Publish(0)
		return c.waitBus(c.a, false, 200*time.Millisecond)
	})
	c.check("cut: a reports bus_connected false", err == nil, "false within 15s", "%s", errText(err))
	probe.Leave(2 * time.Second)
	bb := c.bus(c.b)
	c.check("cut: b stays connected", bb.Connected, "bus_connected true", "%v", bb.Connected)
	err = c.a.target.Admin.Readyz(c.ctx)
	c.check("cut: a stays ready", err == nil, "/readyz 200", "%s", errText(err))
	dropA := c.bus(c.a).Dropped
	c.publish(pubs, n, 2*n, 200)
	c.expectDelivery("cut: a delivers locally", ma, ma[:1], n, 2*n, n, 15*time.Second)
	c.expectDelivery("cut: b unaffected", mb, mb[:1], n, 2*n, n, 15*time.Second)
	var da int64
	err = chaos.Poll(c.ctx, 5*time.Second, 50*time.Millisecond, func() error {
		if da = c.bus(c.a).Dropped - dropA; da != n {
			return fmt.Errorf("dropped +%d", da)
		}
		return nil
	})
	c.check("cut: a counts each message it could not send", err == nil, fmt.Sprintf("bus_dropped_total +%d on a", n), "+%d", da)

	c.res.Fault("a↔NATS restored")
	if err := c.tox.ResetToxics(); err != nil {
		c.fatal("%v", err)
	}
	took := c.expectRecovery("recovery: a reconnected and resubscribed", time.Now(), interest)
	c.res.Note("a back on the bus %.1fs after the link was restored", took.Seconds())
	c.publish(pubs, 2*n, 3*n, 200)
	c.expectDelivery("after: every message on both replicas", all, pubs, 2*n, 3*n, n, 15*time.Second)
	// While cut, nothing crossed either way: a's members missed b's
	// messages of that phase (b could not know a was gone; the broker
	// had dropped a's interest), b's members missed a's (counted by a).
	missed := 0
	for _, m := range mb {
		missed += chaos.DeliveryOf(m.Seqs(ma[0].ID), n, 2*n).InRange
	}
	for _, m := range ma {
		missed += chaos.DeliveryOf(m.Seqs(mb[0].ID), n, 2*n).InRange
	}
	c.check("cut: nothing crossed while a was cut off", missed == 0, "0 cross-replica deliveries of the cut phase", "%d", missed)
	leave(all)
	c.finish(20*time.Second, 0, topic)
}

// Scenario cluster 4: replica a is killed (SIGKILL) with subscribers on
// it. Its clients see the connection end; the broker drops a's interest
// (/subsz); b keeps serving old and new clients. Then a is started again
// and rejoins with no subscription.
func TestClusterReplicaKilled(t *testing.T) {
	const onA, onB, n = 10, 3, 20
	c := startCluster(t, "cluster-replica-killed",
		fmt.Sprintf("%d members on a, %d on b; SIGKILL a; b keeps serving; a started again.", onA, onB),
		clusterOpts{conns: onA})
	topic := "cluster-kill"
	ma, mb, _ := c.joinBoth(topic, onA, onB)
	pub := mb[0]
	c.publish([]*chaos.Member{pub}, 0, n, 500)
	c.expectDelivery("before: b's messages on both replicas", slices.Concat(ma, mb), []*chaos.Member{pub}, 0, n, n, 15*time.Second)

	c.res.Fault("SIGKILL replica a with %d clients", onA)
	if err := c.a.wsd.Signal(c.ctx, "SIGKILL"); err != nil {
		c.fatal("%v", err)
	}
	c.a.down = true
	c.a.checker.Stop()
	var ended, codes int
	err := chaos.Poll(c.ctx, 15*time.Second, 50*time.Millisecond, func() error {
		ended, codes = 0, 0
		for _, m := range ma {
			if e, code := m.Ended(); e {
				ended++
				if code != 0 {
					codes++
				}
			}
		}
		if ended < onA {
			return fmt.Errorf("%d of %d ended", ended, onA)
		}
		return nil
	})
	c.check("a's clients see their connection end, without a close frame", err == nil && codes == 0,
		fmt.Sprintf("%d ended, 0 close frames", onA), "%d ended, %d close frames (%s)", ended, codes, errText(err))
	subs, err := c.waitNATSSubs(1, 15*time.Second)
	c.check("the broker dropped the dead replica's interest", err == nil, fmt.Sprintf("/subsz = %d (b's only)", c.natsBase+1), "%d (%s)", subs, errText(err))

	// b serves its members and a newcomer; its publishes have no remote
	// interest now and are not dropped.
	late := c.join(c.b, topic, 200, 1)
	busB := c.bus(c.b)
	c.publish([]*chaos.Member{pub}, n, 2*n, 500)
	c.expectDelivery("b keeps serving old and new members", slices.Concat(mb, late), []*chaos.Member{pub}, n, 2*n, n, 15*time.Second)
	b2 := c.bus(c.b)
	c.check("b unaffected: connected, nothing dropped", b2.Connected && b2.Dropped == busB.Dropped, "bus_connected, bus_dropped_total unchanged",
		"connected %v, dropped +%d", b2.Connected, b2.Dropped-busB.Dropped)

	c.res.Fault("replica a started again")
	if err := c.a.wsd.Start(c.ctx); err != nil {
		c.fatal("restart a: %v", err)
	}
	c.attach(c.a)
	c.check("a rejoins with no broker subscription", c.a.busBase.Subscriptions == 0, "bus_subscriptions 0", "%d", c.a.busBase.Subscriptions)
	leave(ma)
	leave(mb)
	leave(late)
	c.finish(20*time.Second, 0, topic)
}

// Scenario cluster 5: rolling restart. A publisher on b sends at a
// steady rate to members on both replicas; a gets SIGTERM. Every member
// on a gets 1001, reconnects to b and keeps receiving, in order; b's
// own members miss nothing; a exits 0 within the drain timeout, is
// started again and receives b's messages once more.
func TestClusterRollingRestart(t *testing.T) {
	const onA, onB = 10, 4
	const drain = 5 * time.Second
	c := startCluster(t, "cluster-rolling-restart",
		fmt.Sprintf("%d members on a, %d on b, a publisher on b at 100 msg/s; SIGTERM a (drain_timeout %s), its members move to b; a started again.", onA, onB, drain),
		clusterOpts{conns: onA + onB, config: map[string]string{"shutdown.drain_timeout": drain.String()}})
	topic := "cluster-rolling"
	ma, mb, _ := c.joinBoth(topic, onA, onB)
	pub := mb[0]
	// The publisher runs until stopped, at most 60s (600 messages).
	var sent atomic.Uint64
	stop := make(chan struct{})
	pubDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for seq := uint64(0); seq < 6000; seq++ {
			select {
			case <-stop:
				pubDone <- nil
				return
			case <-c.ctx.Done():
				pubDone <- c.ctx.Err()
				return
			case <-tick.C:
			}
			if err := pub.Publish(seq); err != nil {
				pubDone <- err
				return
			}
			sent.Store(seq + 1)
		}
		pubDone <- fmt.Errorf("publisher ran out of its bound")
	}()
	var stopOnce sync.Once
	var pubErr error
	stopPub := func() error {
		stopOnce.Do(func() { close(stop); pubErr = <-pubDone })
		return pubErr
	}
	defer func() { _ = stopPub() }()
	// receivedAtLeast waits until every member in ms has a message with
	// seq >= min from the publisher.
	receivedPast := func(ms []*chaos.Member, min uint64, within time.Duration) error {
		return chaos.Poll(c.ctx, within, 50*time.Millisecond, func() error {
			for _, m := range ms {
				s := m.Seqs(pub.ID)
				if len(s) == 0 || s[len(s)-1] < min {
					return fmt.Errorf("member %d: %d messages, none from seq %d", m.ID, len(s), min)
				}
			}
			return nil
		})
	}
	if err := receivedPast(ma, 10, 15*time.Second); err != nil {
		c.fatal("before: cross-replica delivery: %v", err)
	}

	c.res.Fault("SIGTERM replica a with %d clients under load", onA)
	signalled := time.Now()
	if err := c.a.wsd.Signal(c.ctx, "SIGTERM"); err != nil {
		c.fatal("%v", err)
	}
	c.a.checker.Stop()
	// Members move as they get their close, as a client library does.
	codes := map[uint16]int{}
	err := chaos.Poll(c.ctx, drain+10*time.Second, 20*time.Millisecond, func() error {
		moved := 0
		for _, m := range ma {
			if m.Moves() > 0 {
				moved++
				continue
			}
			if ended, code := m.Ended(); ended {
				if err := m.Reconnect(c.ctx, c.b.target.TopicURL(topic)); err != nil {
					return err
				}
				codes[code]++
				moved++
			}
		}
		if moved < onA {
			return fmt.Errorf("%d of %d moved", moved, onA)
		}
		return nil
	})
	c.check("a's clients get 1001 and reconnect to b", err == nil && codes[1001] == onA,
		fmt.Sprintf("%d × 1001, all reconnected", onA), "codes %v (%s)", codes, errText(err))
	movedAt := sent.Load()
	err = receivedPast(ma, movedAt+20, 15*time.Second)
	c.check("moved clients keep receiving on b", err == nil, "messages after the move on every moved client", "%s", errText(err))

	var es struct {
		running bool
		code    int
		took    time.Duration
	}
	err = chaos.Poll(c.ctx, drain+10*time.Second, 100*time.Millisecond, func() error {
		st, err := c.a.wsd.ExitState(c.ctx)
		if err != nil {
			return err
		}
		es.running, es.code, es.took = st.Running, st.ExitCode, st.FinishedAt.Sub(signalled)
		if st.Running {
			return fmt.Errorf("still running")
		}
		return nil
	})
	c.check("a exited 0 within drain_timeout", err == nil && es.code == 0, fmt.Sprintf("exit 0 within %s", drain+10*time.Second),
		"running=%v exit=%d (%s)", es.running, es.code, errText(err))

	c.res.Fault("replica a started again")
	if err := c.a.wsd.Start(c.ctx); err != nil {
		c.fatal("restart a: %v", err)
	}
	c.attach(c.a)
	back := c.join(c.a, topic, 50, 2)
	err = c.waitInterest(recoverWithin, 2, map[*replica][2]int{c.a: {2, 1}, c.b: {onB + onA, 1}})
	c.check("a back: subscribed on the bus again", err == nil, fmt.Sprintf("within %s", recoverWithin), "%s", errText(err))
	err = receivedPast(back, sent.Load()+20, 15*time.Second)
	c.check("a back: its new members receive b's messages", err == nil, "messages on every new member of a", "%s", errText(err))
	if err := stopPub(); err != nil {
		c.fatal("publisher: %v", err)
	}

	total := sent.Load()
	err = nil
	var bad string
	err = chaos.Poll(c.ctx, 10*time.Second, 50*time.Millisecond, func() error {
		for _, m := range mb[1:] {
			if d := chaos.DeliveryOf(m.Seqs(pub.ID), 0, total); d.InRange != int(total) || !d.Ordered {
				return fmt.Errorf("member %d: %d of %d, ordered %v", m.ID, d.InRange, total, d.Ordered)
			}
		}
		return nil
	})
	c.check("b's own members miss nothing", err == nil, fmt.Sprintf("all %d messages, once, in order", total), "%s", errText(err))
	for _, m := range slices.Concat(ma, back) {
		if d := chaos.DeliveryOf(m.Seqs(pub.ID), 0, total); !d.Ordered {
			bad += fmt.Sprintf("member %d out of order or duplicated; ", m.ID)
		}
	}
	c.check("moved and new members: in order, no duplicate", bad == "", "strictly increasing sequence numbers", "%s", orOK(bad))
	c.res.Note("%d messages published; a exited %.2fs after SIGTERM (engine timestamps)", total, es.took.Seconds())
	leave(ma)
	leave(mb)
	leave(back)
	c.finish(20*time.Second, 0, topic)
}
