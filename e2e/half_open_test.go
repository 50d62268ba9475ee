//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 3: half-open peers. Clients that answer pings are cut off by
// Toxiproxy without their connections being closed (a timeout toxic that
// drops every byte; then a frozen proxy process): the server must reap
// every one within ping_interval + pong_timeout plus slack, and give
// back its descriptors.
func TestHalfOpenPeers(t *testing.T) {
	const viaToxic, viaPause = 200, 50
	const ping, pong = time.Second, time.Second
	// slack covers the housekeeping tick, the close, and a loaded CI
	// machine; it is a deadline, not a measurement.
	const slack = 8 * time.Second
	s := startStack(t, "half-open-peers",
		fmt.Sprintf("%d peers blackholed by a Toxiproxy timeout toxic, then %d more by freezing the proxy; heartbeat %s + %s.", viaToxic, viaPause, ping, pong),
		stackOpts{conns: viaToxic + viaPause, toxiproxy: true, config: map[string]string{
			"heartbeat.ping_interval": ping.String(),
			"heartbeat.pong_timeout":  pong.String(),
		}})
	proxy, err := s.tox.Proxy("wsd")
	if err != nil {
		s.fatal("%v", err)
	}

	reap := func(phase string, n int, inject, lift func() error) {
		before, err := s.target.Admin.Stats(s.ctx)
		if err != nil {
			s.fatal("stats: %v", err)
		}
		peers, err := chaos.OpenPeers(s.ctx, s.proxied.EchoURL(), n, chaos.PeerLive)
		if err != nil {
			peers.Close() // the ones opened before the error
			s.fatal("%s: open peers: %v", phase, err)
		}
		defer peers.Close()
		if err := chaos.Poll(s.ctx, 10*time.Second, 50*time.Millisecond, func() error {
			st, err := s.target.Admin.Stats(s.ctx)
			if err != nil {
				return err
			}
			if st.Connections < before.Connections+int64(n) {
				return fmt.Errorf("%d connections", st.Connections)
			}
			return nil
		}); err != nil {
			s.fatal("%s: peers not registered: %v", phase, err)
		}
		start := time.Now()
		if err := inject(); err != nil {
			s.fatal("%s: inject: %v", phase, err)
		}
		defer func() {
			if err := lift(); err != nil {
				t.Errorf("%s: lift the fault: %v", phase, err)
			}
		}()
		deadline := ping + pong + slack
		err = chaos.Poll(s.ctx, deadline, 100*time.Millisecond, func() error {
			st, err := s.target.Admin.Stats(s.ctx)
			if err != nil {
				return err
			}
			if st.Connections > before.Connections {
				return fmt.Errorf("%d of %d still connected", st.Connections-before.Connections, n)
			}
			return nil
		})
		took := time.Since(start)
		after, serr := s.target.Admin.Stats(s.ctx)
		if serr != nil {
			s.fatal("stats: %v", serr)
		}
		s.check(phase+": every peer reaped within ping_interval + pong_timeout + slack", err == nil,
			fmt.Sprintf("%d reaped within %s", n, deadline), "%d left after %.1fs (%v)", after.Connections-before.Connections, took.Seconds(), err)
		s.check(phase+": reaped by the heartbeat", after.HeartbeatTimeoutsTotal-before.HeartbeatTimeoutsTotal == int64(n),
			fmt.Sprintf("heartbeat_timeouts_total +%d", n), "+%d", after.HeartbeatTimeoutsTotal-before.HeartbeatTimeoutsTotal)
		s.res.Note("%s: %d peers reaped %.1fs after the fault", phase, n, took.Seconds())
	}

	s.res.Fault("Toxiproxy timeout toxic (timeout=0) upstream and downstream on %d live peers: bytes dropped, connections left open", viaToxic)
	reap("timeout toxic", viaToxic, func() error {
		for _, dir := range []string{"upstream", "downstream"} {
			if _, err := proxy.AddToxic("blackhole-"+dir, "timeout", dir, 1, toxiclient.Attributes{"timeout": 0}); err != nil {
				return err
			}
		}
		return nil
	}, s.tox.ResetToxics)

	s.res.Fault("Toxiproxy container paused (cgroup freezer) with %d live peers", viaPause)
	reap("paused proxy", viaPause, func() error { return s.tox.Pause(s.ctx) }, func() error { return s.tox.Unpause(s.ctx) })

	s.finish(20 * time.Second)
}
