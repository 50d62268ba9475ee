//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 2: echo flooders that do not read. The server must pause
// reading (paused ≥ 1 seen) with memory bounded, then, once the clients
// read, return every message in order.
func TestEchoFlooder(t *testing.T) {
	const conns, messages, size = 8, 1000, 4096
	s := startStack(t, "echo-flooder",
		fmt.Sprintf("%d clients each write %d × %d B to /ws/echo without reading until the server pauses them, then read everything back.", conns, messages, size),
		stackOpts{conns: conns + 1, config: map[string]string{
			"backpressure.warn_bytes":   "32768",
			"backpressure.pause_bytes":  "65536",
			"backpressure.resume_bytes": "32768",
			"backpressure.max_bytes":    "131072",
			"backpressure.max_paused":   "60s",
		}})
	s.res.Fault("%d non-reading echo flooders (16 KiB SO_RCVBUF and SO_SNDBUF), %d MiB in total", conns, conns*messages*size>>20)
	out, err := chaos.Flood(s.ctx, s.target, chaos.FloodConfig{Conns: conns, Messages: messages, Size: size, PauseWait: 20 * time.Second, Hold: 2 * time.Second})
	if err != nil {
		s.fatal("flood: %v", err)
	}
	s.check("server paused reading", out.PausedSeen >= 1, ">= 1 paused session seen", "%d", out.PausedSeen)
	s.check("every message sent", out.Sent == conns*messages, fmt.Sprint(conns*messages), "%d", out.Sent)
	s.check("zero loss", out.Lost == 0, "0 lost", "%d lost of %d", out.Lost, out.Sent)
	s.check("order kept", out.OutOfOrder == 0, "0 out of order", "%d", out.OutOfOrder)
	s.check("no flooder closed by the server", out.Closed == 0, "0", "%d", out.Closed)
	peak, _ := s.checker.Peak()
	limit := int64(conns) * (s.cfg.Backpressure.PauseBytes + int64(size))
	s.check("buffered bytes bounded by pause_bytes per connection", peak.BufferedBytes <= limit,
		fmt.Sprintf("<= %d (conns × (pause_bytes + one message))", limit), "peak %d", peak.BufferedBytes)
	s.finish(20 * time.Second)
}
