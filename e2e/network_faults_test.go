//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 4: network faults between clients and wsd, through Toxiproxy.
// Each fault has a documented client-side outcome (README, section
// Chaos suite); whatever the fault, wsd must not crash or leak.
func TestNetworkFaults(t *testing.T) {
	s := startStack(t, "network-faults",
		"Echo clients through Toxiproxy under latency with jitter, a bandwidth limit, a slicer, reset_peer, limit_data and the proxy going down.",
		// Short heartbeats: pings are traffic, which the data-triggered
		// toxics (reset_peer, limit_data) need on idle connections.
		stackOpts{conns: 64, toxiproxy: true, config: map[string]string{
			"heartbeat.ping_interval": "1s",
			"heartbeat.pong_timeout":  "3s",
		}})
	proxy, err := s.tox.Proxy("wsd")
	if err != nil {
		s.fatal("%v", err)
	}
	via := s.proxied.EchoURL()
	addToxic := func(name, typ, stream string, attrs toxiclient.Attributes) {
		t.Helper()
		if _, err := proxy.AddToxic(name, typ, stream, 1, attrs); err != nil {
			s.fatal("add toxic %s: %v", name, err)
		}
		s.res.Fault("%s %s %s", typ, stream, attrText(attrs))
	}
	reset := func() {
		t.Helper()
		if err := s.tox.ResetToxics(); err != nil {
			s.fatal("%v", err)
		}
		if proxy, err = s.tox.Proxy("wsd"); err != nil {
			s.fatal("%v", err)
		}
	}
	echoOK := func(phase string, out chaos.EchoOutcome, want int) {
		t.Helper()
		s.check(phase+": every echo back, intact and in order", out.Failed == 0 && out.Echoed == want && out.Mismatched == 0,
			fmt.Sprintf("%d echoed, 0 mismatched, 0 failed", want), "%d echoed, %d mismatched, %d failed %s", out.Echoed, out.Mismatched, out.Failed, out.FirstError)
	}

	// Latency with jitter: slower, never lossy.
	addToxic("latency-down", "latency", "downstream", toxiclient.Attributes{"latency": 150, "jitter": 50})
	addToxic("latency-up", "latency", "upstream", toxiclient.Attributes{"latency": 150, "jitter": 50})
	out := chaos.EchoLoad(s.ctx, s.proxied, chaos.EchoConfig{URL: via, Clients: 10, Messages: 10, Size: 512})
	echoOK("latency", out, 100)
	s.check("latency: round trips carry the injected delay", out.MinRTT >= 200*time.Millisecond,
		">= 200ms (2 × (150ms − 50ms jitter))", "min %s, max %s", out.MinRTT.Round(time.Millisecond), out.MaxRTT.Round(time.Millisecond))
	reset()

	// Bandwidth: 32 KB/s towards each client; 64 KiB per client must
	// take about 2s and arrive whole.
	addToxic("bandwidth", "bandwidth", "downstream", toxiclient.Attributes{"rate": 32})
	start := time.Now()
	out = chaos.EchoLoad(s.ctx, s.proxied, chaos.EchoConfig{URL: via, Clients: 2, Messages: 16, Size: 4096})
	took := time.Since(start)
	echoOK("bandwidth", out, 32)
	s.check("bandwidth: the limit held", took >= 1800*time.Millisecond, ">= 1.8s for 64 KiB per connection at 32 KB/s", "%.1fs", took.Seconds())
	reset()

	// Slicer: frames arrive in small, delayed TCP segments both ways.
	addToxic("slicer-down", "slicer", "downstream", toxiclient.Attributes{"average_size": 32, "size_variation": 16, "delay": 200})
	addToxic("slicer-up", "slicer", "upstream", toxiclient.Attributes{"average_size": 32, "size_variation": 16, "delay": 200})
	out = chaos.EchoLoad(s.ctx, s.proxied, chaos.EchoConfig{URL: via, Clients: 10, Messages: 10, Size: 2048})
	echoOK("slicer", out, 100)
	reset()

	// reset_peer: live connections are reset; clients see the end without
	// a close frame and the server releases the sessions.
	ended := func(phase string, n int, inject func()) {
		t.Helper()
		before, err := s.target.Admin.Stats(s.ctx)
		if err != nil {
			s.fatal("stats: %v", err)
		}
		peers, err := chaos.OpenPeers(s.ctx, via, n, chaos.PeerLive)
		if err != nil {
			peers.Close() // the ones opened before the error
			s.fatal("%s: %v", phase, err)
		}
		defer peers.Close()
		inject()
		// Traffic through the toxics: three 1 KiB echoes per peer (the
		// readers consume the answers).
		for _, c := range peers.Conns() {
			for range 3 {
				_ = c.WriteMessage(chaos.OpBinary, make([]byte, 1024))
			}
		}
		err = peers.WaitEnded(s.ctx, 15*time.Second)
		_, codes := peers.Ended()
		s.check(phase+": clients see the connection end without a close frame", err == nil && codes[0] == n,
			fmt.Sprintf("%d ended, no close frame", n), "codes %v (%v)", codes, err)
		err = chaos.Poll(s.ctx, 15*time.Second, 100*time.Millisecond, func() error {
			st, err := s.target.Admin.Stats(s.ctx)
			if err != nil {
				return err
			}
			if st.Connections > before.Connections {
				return fmt.Errorf("%d sessions left", st.Connections-before.Connections)
			}
			return nil
		})
		s.check(phase+": server released every session", err == nil, "all released within 15s", "%v", errText(err))
	}
	ended("reset_peer", 20, func() {
		addToxic("reset", "reset_peer", "downstream", toxiclient.Attributes{"timeout": 200})
	})
	reset()

	// limit_data: each connection is closed after 2 KiB towards the client.
	ended("limit_data", 10, func() {
		addToxic("limit", "limit_data", "downstream", toxiclient.Attributes{"bytes": 2048})
	})
	reset()

	// Proxy down: existing connections close, new ones are refused, and
	// service resumes when it comes back.
	ended("proxy down", 10, func() {
		if err := proxy.Disable(); err != nil {
			s.fatal("disable proxy: %v", err)
		}
		s.res.Fault("proxy disabled (down), then enabled")
	})
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	_, derr := chaos.Dial(ctx, via)
	cancel()
	s.check("proxy down: new connections fail fast", derr != nil, "dial error within 5s", "%v", errText(derr))
	if err := proxy.Enable(); err != nil {
		s.fatal("enable proxy: %v", err)
	}
	out = chaos.EchoLoad(s.ctx, s.proxied, chaos.EchoConfig{URL: via, Clients: 5, Messages: 5, Size: 256})
	echoOK("proxy back up", out, 25)
	reset()

	// Every fault over: direct clients still served.
	out = chaos.EchoLoad(s.ctx, s.target, chaos.EchoConfig{Clients: 5, Messages: 5, Size: 256})
	echoOK("after all faults, direct", out, 25)
	s.finish(20 * time.Second)
}

func attrText(a toxiclient.Attributes) string {
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, a[k]))
	}
	return strings.Join(parts, " ")
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	var he *chaos.HandshakeError
	if errors.As(err, &he) {
		return fmt.Sprintf("HTTP %d", he.Status)
	}
	return err.Error()
}
