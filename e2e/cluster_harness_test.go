//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/wsd-dev/wsd/chaos"
	"github.com/wsd-dev/wsd/chaos/natscontainer"
	"github.com/wsd-dev/wsd/chaos/toxiproxy"
	"github.com/wsd-dev/wsd/chaos/wsdcontainer"
	"github.com/wsd-dev/wsd/service"
)

// The cluster scenarios (TestCluster*) run two wsd replicas and a NATS
// server on one Docker network; with clusterOpts.toxiproxy, replica a
// reaches NATS through Toxiproxy (proxy "nats"), so its broker link
// alone can be degraded. Each replica has its own checker; the scenario
// ends with every counter of every replica back to its baseline, the
// broker subscriptions included (bus_subscriptions and the server's own
// /subsz count).

// clusterConfig is what every cluster scenario sets on top of
// suiteConfig: the bus, and a reconnect backoff capped low enough that
// recovery bounds stay within the suite's time budget (production
// default: 10s).
var clusterConfig = map[string]string{
	"bus.kind":                    "nats",
	"bus.nats.reconnect_wait_max": "2s",
}

// recoverWithin is how long a replica may take to reconnect to the
// broker and resubscribe once it is reachable again: the capped backoff
// (2s + 25% jitter) plus a connect timeout (2s), doubled for a loaded
// 2-core machine.
const recoverWithin = 10 * time.Second

// clusterOpts configures one cluster scenario.
type clusterOpts struct {
	// config is wsd configuration (dotted keys) on top of suiteConfig and
	// clusterConfig, for both replicas.
	config map[string]string
	// conns is the most connections one replica holds at once.
	conns int
	// toxiproxy puts Toxiproxy between replica a and NATS.
	toxiproxy bool
}

// replica is one wsd of a cluster.
type replica struct {
	// wsdProc is the replica's container; a restart by the scenario
	// re-attaches, taking a new baseline.
	wsdProc
	name    string
	target  chaos.Target
	busBase chaos.BusStats
	// down: the scenario ended this replica; its invariants are not
	// checked.
	down bool
}

// cluster is one scenario's running system.
type cluster struct {
	scenario
	nats     *natscontainer.Container
	tox      *toxiproxy.Container
	a, b     *replica
	bound    int64
	natsBase int

	img   string
	nw    *testcontainers.DockerNetwork
	env   map[string]string
	urls  map[string]string // replica name → its bus.nats.url
	clean sync.Once
}

var clusterImgOnce struct {
	sync.Once
	nats string
	err  error
}

// startNATS builds the NATS image (once per process) and starts the
// server on nw under alias, removed at test end, pass or fail; it stops
// the test when it cannot.
func startNATS(t *testing.T, nw *testcontainers.DockerNetwork, alias string) *natscontainer.Container {
	t.Helper()
	ctx := t.Context()
	clusterImgOnce.Do(func() { clusterImgOnce.nats, clusterImgOnce.err = natscontainer.Image(ctx) })
	if clusterImgOnce.err != nil {
		t.Fatalf("build the NATS image: %v", clusterImgOnce.err)
	}
	n, err := natscontainer.Run(ctx, clusterImgOnce.nats, network.WithNetwork([]string{alias}, nw))
	testcontainers.CleanupContainer(t, n)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	return n
}

// startCluster starts NATS (alias nats), optionally Toxiproxy, and
// replicas a and b (aliases wsd-a, wsd-b), waits until both are
// connected to the broker, and takes every baseline. Everything is
// removed at test end, pass or fail.
func startCluster(t *testing.T, name, description string, o clusterOpts) *cluster {
	t.Helper()
	wsdImg, toxImg, nw := prepare(t)
	ctx := t.Context()
	c := &cluster{scenario: scenario{t: t, ctx: ctx, res: chaos.NewResult(name, description)}, img: wsdImg, nw: nw, urls: map[string]string{}}
	n := startNATS(t, nw, "nats")
	c.nats = n
	c.urls["a"], c.urls["b"] = n.InternalURL(), n.InternalURL()
	if o.toxiproxy {
		tox, err := toxiproxy.Run(ctx, toxImg, network.WithNetwork([]string{"toxiproxy"}, nw),
			toxiproxy.WithProxy("nats", "nats:4222"))
		testcontainers.CleanupContainer(t, tox)
		if err != nil {
			t.Fatalf("start toxiproxy: %v", err)
		}
		c.tox = tox
		c.urls["a"] = "nats://toxiproxy:" + strconv.Itoa(toxiproxy.FirstProxyPort)
	}

	cfg := service.DefaultConfig()
	svc := map[string]string{}
	for k, v := range suiteConfig {
		svc[k] = v
	}
	c.env = map[string]string{}
	for k, v := range clusterConfig {
		c.env[k] = v
	}
	for k, v := range o.config {
		if strings.HasPrefix(k, "bus.") {
			c.env[k] = v
			continue
		}
		svc[k] = v
	}
	applyConfig(t, &cfg, svc)
	for k, v := range svc {
		c.env[k] = v
	}
	c.bound = chaos.MemoryBound(max(o.conns, 1), cfg.Backpressure, cfg.Limits.MaxMessageBytes)
	c.res.MemoryBound = c.bound

	c.a = c.startReplica("a")
	c.b = c.startReplica("b")
	// Both replicas connected, no topic yet: the server's subscription
	// count now is the one the scenario must return to.
	var err error
	if c.natsBase, err = c.nats.Subscriptions(ctx); err != nil {
		c.fatal("nats /subsz: %v", err)
	}
	c.res.Note("two replicas (a, b) and NATS %s on one network%s; wsd config: %s; memory limit %s per replica; the chart shows replica b",
		natscontainer.Version, map[bool]string{true: ", replica a through Toxiproxy", false: ""}[o.toxiproxy], configLine(o.config), chaos.MiB(c.bound))
	t.Cleanup(c.record)
	return c
}

// startReplica runs replica name, waits until it reports the broker
// connected, warms it up and takes its baseline.
func (c *cluster) startReplica(name string) *replica {
	c.t.Helper()
	ctx := c.ctx
	opts := []testcontainers.ContainerCustomizer{
		network.WithNetwork([]string{"wsd-" + name}, c.nw),
		wsdcontainer.WithMemoryLimit(c.bound),
		testcontainers.WithEnv(map[string]string{"GOMEMLIMIT": strconv.FormatInt(c.bound*8/10, 10)}),
		wsdcontainer.WithConfig("bus.nats.url", c.urls[name]),
	}
	for k, v := range c.env {
		opts = append(opts, wsdcontainer.WithConfig(k, v))
	}
	w, err := wsdcontainer.Run(ctx, c.img, opts...)
	testcontainers.CleanupContainer(c.t, w)
	if err != nil {
		c.t.Fatalf("start replica %s: %v", name, err)
	}
	c.t.Cleanup(func() { _ = w.Close() })
	r := &replica{name: name, wsdProc: wsdProc{wsd: w}}
	c.attach(r)
	return r
}

// attach points r's clients at its (possibly restarted) container,
// waits for the broker connection and takes a fresh baseline.
func (c *cluster) attach(r *replica) {
	c.t.Helper()
	ctx := c.ctx
	admin := chaos.NewAdmin(r.wsd.AdminURL())
	c.t.Cleanup(admin.Close)
	r.target = chaos.Target{WS: r.wsd.WSURL(), Admin: admin}
	r.down = false
	if err := c.waitBus(r, true, recoverWithin); err != nil {
		c.fatal("replica %s never connected to the broker: %v", r.name, err)
	}
	if err := r.baseline(ctx, admin, r.target.EchoURL()); err != nil {
		c.fatal("replica %s: %v", r.name, err)
	}
	var err error
	if r.busBase, err = admin.BusStats(ctx); err != nil {
		c.fatal("replica %s bus stats: %v", r.name, err)
	}
}

// bus reads r's bus counters, failing the scenario when it cannot.
func (c *cluster) bus(r *replica) chaos.BusStats {
	c.t.Helper()
	st, err := r.target.Admin.BusStats(c.ctx)
	if err != nil {
		c.fatal("replica %s: %v", r.name, err)
	}
	return st
}

// waitBus polls until r's bus_connected is want.
func (c *cluster) waitBus(r *replica, want bool, within time.Duration) error {
	return chaos.Poll(c.ctx, within, 50*time.Millisecond, func() error {
		st, err := r.target.Admin.BusStats(c.ctx)
		if err != nil {
			return err
		}
		if st.Connected != want {
			return fmt.Errorf("bus_connected=%v", st.Connected)
		}
		return nil
	})
}

// waitInterest polls until every replica in want has the given local
// subscriber count and broker subscriptions over its baseline, and the
// server has natsBase+natsSubs subscriptions: then a message published
// anywhere reaches every subscriber.
func (c *cluster) waitInterest(within time.Duration, natsSubs int, want map[*replica][2]int) error {
	return chaos.Poll(c.ctx, within, 50*time.Millisecond, func() error {
		for r, w := range want {
			st, err := r.target.Admin.Stats(c.ctx)
			if err != nil {
				return err
			}
			bs, err := r.target.Admin.BusStats(c.ctx)
			if err != nil {
				return err
			}
			base := r.checker.BaselineStats().Subscribers
			if st.Subscribers != base+w[0] || bs.Subscriptions != r.busBase.Subscriptions+w[1] {
				return fmt.Errorf("replica %s: %d subscribers (want %d), bus_subscriptions %d (want %d)",
					r.name, st.Subscribers-base, w[0], bs.Subscriptions-r.busBase.Subscriptions, w[1])
			}
		}
		n, err := c.nats.Subscriptions(c.ctx)
		if err != nil {
			return err
		}
		if n != c.natsBase+natsSubs {
			return fmt.Errorf("nats /subsz: %d subscriptions over the baseline, want %d", n-c.natsBase, natsSubs)
		}
		return nil
	})
}

// waitNATSSubs polls until the server has extra subscriptions over its
// baseline, and returns the last count it read.
func (c *cluster) waitNATSSubs(extra int, within time.Duration) (int, error) {
	var n int
	err := chaos.Poll(c.ctx, within, 100*time.Millisecond, func() error {
		var err error
		if n, err = c.nats.Subscriptions(c.ctx); err != nil {
			return err
		}
		if n != c.natsBase+extra {
			return fmt.Errorf("%d subscriptions over the baseline, want %d", n-c.natsBase, extra)
		}
		return nil
	})
	return n, err
}

// joinBoth connects onA members (ids from 1) to topic on replica a and
// onB (ids from 101) on b, and waits until each replica has them and one
// broker subscription for the topic; it returns the members and that
// interest, for waitInterest after a fault.
func (c *cluster) joinBoth(topic string, onA, onB int) (ma, mb []*chaos.Member, interest map[*replica][2]int) {
	c.t.Helper()
	ma = c.join(c.a, topic, 1, onA)
	mb = c.join(c.b, topic, 101, onB)
	interest = map[*replica][2]int{c.a: {onA, 1}, c.b: {onB, 1}}
	if err := c.waitInterest(15*time.Second, 2, interest); err != nil {
		c.fatal("subscriptions: %v", err)
	}
	return ma, mb, interest
}

// expectRecovery waits up to recoverWithin for interest to be back (the
// fault ended at since), records that as the invariant name, stops the
// scenario when it did not recover, and returns how long it took.
func (c *cluster) expectRecovery(name string, since time.Time, interest map[*replica][2]int) time.Duration {
	c.t.Helper()
	err := c.waitInterest(recoverWithin, 2, interest)
	took := time.Since(since)
	c.check(name, err == nil, fmt.Sprintf("within %s", recoverWithin), "%.1fs (%s)", took.Seconds(), errText(err))
	if err != nil {
		c.fatal("no recovery: %v", err)
	}
	return took
}

// join connects n members with ids from firstID to topic on r.
func (c *cluster) join(r *replica, topic string, firstID uint32, n int) []*chaos.Member {
	c.t.Helper()
	var ms []*chaos.Member
	for i := range n {
		m, err := chaos.JoinTopic(c.ctx, r.target.TopicURL(topic), firstID+uint32(i))
		if err != nil {
			leave(ms)
			c.fatal("replica %s: %v", r.name, err)
		}
		ms = append(ms, m)
	}
	c.t.Cleanup(func() { leave(ms) })
	return ms
}

// leave closes members gracefully; a member already gone is skipped.
func leave(ms []*chaos.Member) {
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() { m.Leave(2 * time.Second) })
	}
	wg.Wait()
}

// publish sends seqs [from, to) from every publisher in pubs, the
// publishers interleaved, paced to about rate messages per second in
// total (0: unpaced).
func (c *cluster) publish(pubs []*chaos.Member, from, to uint64, rate float64) {
	c.t.Helper()
	var gap time.Duration
	if rate > 0 {
		gap = time.Duration(float64(time.Second) * float64(len(pubs)) / rate)
	}
	for seq := from; seq < to; seq++ {
		for _, p := range pubs {
			if err := p.Publish(seq); err != nil {
				c.fatal("%v", err)
			}
		}
		if gap > 0 {
			select {
			case <-c.ctx.Done():
				c.fatal("publish: %v", c.ctx.Err())
			case <-time.After(gap):
			}
		}
	}
}

// expectDelivery polls until every receiver has exactly want messages
// in [lo, hi) from every publisher in pubs (itself excluded: a publisher
// never gets its own) and records one invariant: every message once, in
// per-publisher order.
func (c *cluster) expectDelivery(phase string, receivers, pubs []*chaos.Member, lo, hi uint64, want int, within time.Duration) bool {
	c.t.Helper()
	var bad string
	err := chaos.Poll(c.ctx, within, 50*time.Millisecond, func() error {
		bad = ""
		for _, r := range receivers {
			for _, p := range pubs {
				exp := want
				if p == r {
					exp = 0
				}
				d := chaos.DeliveryOf(r.Seqs(p.ID), lo, hi)
				if !d.Ordered {
					bad = fmt.Sprintf("member %d: messages of %d out of order or duplicated", r.ID, p.ID)
					return nil // final: waiting cannot repair it
				}
				if d.InRange != exp {
					return fmt.Errorf("member %d has %d of %d messages [%d,%d) of publisher %d", r.ID, d.InRange, exp, lo, hi, p.ID)
				}
			}
		}
		return nil
	})
	if bad == "" && err != nil {
		bad = err.Error()
	}
	return c.check(phase, bad == "", fmt.Sprintf("%d receivers × %d publishers: %d messages each, once, in order", len(receivers), len(pubs), want), "%s", orOK(bad))
}

func orOK(s string) string {
	if s == "" {
		return "ok"
	}
	return s
}

// fatal records err as the scenario's failure and stops the test, with
// the logs of both replicas.
func (c *cluster) fatal(format string, args ...any) {
	c.t.Helper()
	err := fmt.Errorf(format, args...)
	c.res.Fail(err)
	var logs string
	for _, r := range []*replica{c.a, c.b} {
		if r != nil {
			logs += fmt.Sprintf("\nreplica %s logs (tail):\n%s", r.name, tail(r.wsd.LogText(context.Background()), 25))
		}
	}
	c.t.Fatalf("%v%s", err, logs)
}

// finish asserts the shared invariants on every replica still up:
// counters and broker subscriptions back to the baseline within quiet,
// memory under the bound, no OOM kill, still running the process it
// was attached with, /metrics consistent with /debug/stats and free of
// the scenario's topic names (clientValues); and the server's
// subscription count back to its baseline plus extraNATS (a replica
// restarted by the scenario has its own baseline).
func (c *cluster) finish(quiet time.Duration, extraNATS int, clientValues ...string) {
	c.t.Helper()
	ctx := c.ctx
	for _, r := range []*replica{c.a, c.b} {
		if r.down {
			continue
		}
		p := "replica " + r.name + ": "
		c.checkAll(p, r.checker.CheckBaseline(ctx, quiet))
		var got chaos.BusStats
		err := chaos.Poll(ctx, quiet, 100*time.Millisecond, func() error {
			var err error
			if got, err = r.target.Admin.BusStats(ctx); err != nil {
				return err
			}
			if got.Subscriptions != r.busBase.Subscriptions || !got.Connected {
				return fmt.Errorf("bus_subscriptions %d, connected %v", got.Subscriptions, got.Connected)
			}
			return nil
		})
		c.check(p+"bus_subscriptions back to baseline, connected", err == nil,
			fmt.Sprintf("= %d, bus_connected", r.busBase.Subscriptions), "%d, connected=%v (%s)", got.Subscriptions, got.Connected, errText(err))
		// A replica started late in the scenario may not have had its
		// first memory sample (a container stats read takes a second).
		_ = chaos.Poll(ctx, 10*time.Second, 100*time.Millisecond, func() error {
			if _, m := r.checker.Peak(); m < 0 {
				return fmt.Errorf("no memory sample yet")
			}
			return nil
		})
		r.checkEnd(&c.scenario, p, c.bound, clientValues)
	}
	n, err := c.waitNATSSubs(extraNATS, quiet)
	c.check("nats: subscriptions back to baseline", err == nil, fmt.Sprintf("= %d", c.natsBase+extraNATS), "%d (%s)", n, errText(err))
}

// record stores the result for the report (runs at test cleanup).
func (c *cluster) record() {
	c.clean.Do(func() {
		if c.a != nil && c.a.checker != nil {
			c.a.checker.Stop()
		}
		var series []chaos.Sample
		if c.b != nil && c.b.checker != nil {
			series = c.b.checker.Stop()
		}
		c.store(series)
	})
}
