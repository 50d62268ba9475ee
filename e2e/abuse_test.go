//go:build e2e

package e2e

import (
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
