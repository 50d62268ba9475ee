//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 7: protocol abuse. Every invalid input gets its documented
// close code (README, Close codes) or HTTP status, and slowloris upgrade
// requests are cut at handshake_timeout.
func TestProtocolAbuse(t *testing.T) {
	const maxMsg = 4096
	const handshake = 2 * time.Second
	s := startStack(t, "protocol-abuse",
		"Invalid close codes, 1-byte and non-UTF-8 close payloads, invalid UTF-8 text, an oversized message, framing violations, malformed upgrades, hostile handshakes (bad or repeated key/version, HTTP/1.0, request bodies that are frames, dot topics), a forbidden Origin and slowloris upgrade requests.",
		stackOpts{conns: 64, config: map[string]string{
			"limits.max_message_bytes": "4096",
			"limits.handshake_timeout": handshake.String(),
			"limits.allowed_origins":   "http://allowed.example",
		}})
	cases := chaos.Abuse(s.ctx, s.target, chaos.AbuseConfig{
		MaxMessageBytes: maxMsg, HandshakeTimeout: handshake, Slowloris: 20, ForbiddenOrigin: "http://evil.example",
	})
	s.check("abuse cases ran", len(cases) >= 20, ">= 20", "%d", len(cases))
	for _, c := range cases {
		s.res.Fault("%s", c.Name)
		s.check(c.Name, c.Pass, c.Want, "%s", c.Got)
	}
	// The allowed Origin still gets in.
	c, err := chaos.Dial(s.ctx, s.target.EchoURL(), chaos.WithHeader("Origin", "http://allowed.example"))
	s.check("allowed Origin upgrades", err == nil, "101", "%s", errText(err))
	if err == nil {
		_ = c.CloseGracefully(2 * time.Second)
	}
	s.finish(20*time.Second, "no spaces!")
}

// Scenario 7b: thousands of peers each send the header of a 64 KiB frame
// and all of it but the last byte, then stall. Memory stays under the
// container limit (the partial-message budget bounds what wsd holds, the
// kernel holds at most a receive buffer per socket), limits.frame_timeout
// closes every one with 1008, and everything returns to the baseline in
// the same process.
func TestStalledFrames(t *testing.T) {
	const peers, size = 2000, 64 << 10
	const frameTimeout = 5 * time.Second
	const budget = 16 << 20
	// Idle overhead and a receive buffer's worth of stalled payload per
	// peer, the budget held in wsd's heap, and the fixed overhead.
	limit := int64(chaos.MemoryOverhead + peers*(chaos.PerConnOverhead+size) + budget)
	s := startStack(t, "stalled-frames",
		fmt.Sprintf("%d peers each send a header for a %d KiB frame and %d bytes of it, then stall.", peers, size>>10, size-1),
		stackOpts{memLimit: limit, config: map[string]string{
			"limits.max_message_bytes": fmt.Sprint(size),
			"limits.max_partial_bytes": fmt.Sprint(budget),
			"limits.frame_timeout":     frameTimeout.String(),
			"limits.max_connections":   fmt.Sprint(peers + 100),
		}})
	s.res.Fault("%d stalled %d KiB frames (%s declared; partial budget %s)", peers, size>>10, chaos.MiB(int64(peers)*size), chaos.MiB(budget))
	out := chaos.StalledFrames(s.ctx, s.target, peers, size, frameTimeout+30*time.Second)
	s.check("every peer sent its partial frame", out.Opened == peers && len(out.Errors) == 0, fmt.Sprint(peers), "%d (errors %v)", out.Opened, out.Errors)
	s.check("every stalled peer closed with 1008 frame timeout", out.Codes[1008] == peers, fmt.Sprintf("%d × 1008", peers), "%s", out)
	st, err := s.target.Admin.Stats(s.ctx)
	s.check("frame_timeouts_total counts them", err == nil && st.FrameTimeoutsTotal == peers, fmt.Sprint(peers), "%d (%v)", st.FrameTimeoutsTotal, err)
	s.finish(20 * time.Second)
}
