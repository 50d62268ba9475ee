//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 6: churn. Ten thousand connect/use/close cycles, a third of
// them ended by an RST without a close frame and a third by a bare FIN:
// descriptors and goroutines must not grow.
func TestChurn(t *testing.T) {
	const cycles, workers = 10000, 32
	s := startStack(t, "churn",
		fmt.Sprintf("%d connect/echo/close cycles over %d workers (every 4th on a topic); endings rotate between a close handshake, an RST and a FIN without a close frame.", cycles, workers),
		stackOpts{conns: workers})
	s.res.Fault("%d cycles; %d abrupt resets (SO_LINGER 0), %d closes without a close frame", cycles, cycles/3, cycles/3)
	half := func(n int) chaos.ChurnOutcome {
		out, err := chaos.Churn(s.ctx, s.target, chaos.ChurnConfig{Cycles: n, Workers: workers, Timeout: 5 * time.Minute})
		if err != nil {
			s.fatal("churn: %v", err)
		}
		return out
	}
	first := half(cycles / 2)
	mid, err := s.target.Admin.Stats(s.ctx)
	if err != nil {
		s.fatal("stats: %v", err)
	}
	second := half(cycles - cycles/2)
	total := first.Cycles + second.Cycles
	s.check("every cycle completed", total == cycles, fmt.Sprint(cycles), "%d (graceful %d, resets %d, dropped %d)",
		total, first.Graceful+second.Graceful, first.Resets+second.Resets, first.Dropped+second.Dropped)
	s.check("no cycle refused or failed", first.Refused+second.Refused+first.Failed+second.Failed == 0, "0",
		"%d refused, %d failed %s%s", first.Refused+second.Refused, first.Failed+second.Failed, first.FirstError, second.FirstError)
	s.res.Note("between the halves: open_fds %d, goroutines %d, connections %d", mid.OpenFDs, mid.Goroutines, mid.Connections)
	s.finish(30*time.Second, "churn-3", "churn-7")
}
