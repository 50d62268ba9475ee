//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 5: descriptor pressure. wsd runs with RLIMIT_NOFILE 256 while
// 1000 upgrade attempts and 100 raw TCP connections that never send a
// request arrive. Excess attempts must be refused (503 or a fast close,
// never a hang), the admin listener must keep answering, established
// sessions must keep echoing, and after the load is released new
// connections must succeed with descriptors back to the baseline.
func TestFDPressure(t *testing.T) {
	const nofile, attempts, raw, survivors = 256, 1000, 100, 20
	const handshake = 2 * time.Second
	s := startStack(t, "fd-pressure",
		fmt.Sprintf("nofile=%d; %d established sessions, then %d raw idle TCP connections and %d upgrade attempts (50 at a time).", nofile, survivors, raw, attempts),
		stackOpts{conns: nofile, nofile: nofile, config: map[string]string{
			"limits.handshake_timeout": handshake.String(),
		}})
	s.res.Fault("container RLIMIT_NOFILE %d", nofile)

	established, err := chaos.OpenPeers(s.ctx, s.target.EchoURL(), survivors, chaos.PeerIdle)
	if err != nil {
		established.Close() // the ones opened before the error
		s.fatal("established sessions: %v", err)
	}
	defer established.Close()

	// Admin probe: /healthz and /debug/stats every 100ms throughout.
	var probes, probeFails atomic.Int64
	var firstFail atomic.Value
	pctx, stopProbe := context.WithCancel(s.ctx)
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		admin := chaos.NewAdmin(s.wsd.AdminURL())
		defer admin.Close()
		for pctx.Err() == nil {
			err := admin.Healthz(pctx)
			if err == nil {
				_, err = admin.Stats(pctx)
			}
			if pctx.Err() != nil {
				return
			}
			probes.Add(1)
			if err != nil {
				probeFails.Add(1)
				firstFail.CompareAndSwap(nil, err.Error())
			}
			select {
			case <-pctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	s.res.Fault("%d raw TCP connections that never send a request", raw)
	rawConns, err := chaos.OpenRaw(s.ctx, s.target.WS, raw)
	if err != nil {
		rawConns.Close() // the ones opened before the error
		s.fatal("raw connections: %v", err)
	}
	defer rawConns.Close()
	s.res.Fault("%d upgrade attempts, 50 concurrent, each allowed 10s to resolve", attempts)
	storm, held := chaos.Storm(s.ctx, s.target.EchoURL(), attempts, 50, 10*time.Second)
	defer held.Close()

	// Hold the pressure while the probe keeps asking.
	select {
	case <-time.After(3 * time.Second):
	case <-s.ctx.Done():
	}
	ok, echoErr := established.Echo(10 * time.Second)
	stopProbe()
	pwg.Wait()

	s.res.Note("storm: %+v", storm)
	resolved := storm.Upgraded + storm.Refused503 + storm.ClosedFast
	for _, n := range storm.OtherStatus {
		resolved += n
	}
	s.check("no attempt hung", storm.Hung == 0, "0 hung (every attempt answered within 10s)", "%d hung, slowest %s", storm.Hung, storm.Slowest.Round(time.Millisecond))
	s.check("every attempt resolved", resolved == attempts, fmt.Sprint(attempts), "%d", resolved)
	s.check("excess refused with 503 or a fast close", storm.Refused503+storm.ClosedFast > 0 && storm.Upgraded+survivors < nofile,
		fmt.Sprintf("refusals > 0, upgraded < %d", nofile), "%d upgraded, %d × 503, %d closed at accept, other %v", storm.Upgraded, storm.Refused503, storm.ClosedFast, storm.OtherStatus)
	s.check("no other refusal status", len(storm.OtherStatus) == 0, "only 503", "%v", storm.OtherStatus)
	s.check("established sessions keep echoing under pressure", ok == survivors && echoErr == nil,
		fmt.Sprintf("%d of %d", survivors, survivors), "%d of %d (%v)", ok, survivors, errText(echoErr))
	fails, _ := firstFail.Load().(string)
	s.check("admin /healthz and /debug/stats answered throughout", probeFails.Load() == 0 && probes.Load() >= 10,
		">= 10 probes, 0 failed", "%d of %d failed %s", probeFails.Load(), probes.Load(), fails)
	closedRaw := rawConns.WaitClosed(handshake + 8*time.Second)
	s.check("raw idle connections cut by the server", closedRaw == raw,
		fmt.Sprintf("%d closed within handshake_timeout (%s) + 8s", raw, handshake), "%d", closedRaw)
	peak, _ := s.checker.Peak()
	s.check("descriptors stayed under the limit", peak.OpenFDs < nofile, fmt.Sprintf("< %d", nofile), "peak %d", peak.OpenFDs)

	// Release everything; new connections must succeed again.
	held.Close()
	established.Close()
	rawConns.Close()
	var after chaos.EchoOutcome
	err = chaos.Poll(s.ctx, 15*time.Second, 200*time.Millisecond, func() error {
		after = chaos.EchoLoad(s.ctx, s.target, chaos.EchoConfig{Clients: 20, Messages: 3, Size: 128})
		if after.Failed > 0 {
			return fmt.Errorf("%d failed: %s", after.Failed, after.FirstError)
		}
		return nil
	})
	s.check("after release, new connections succeed", err == nil && after.Echoed == 60, "20 clients × 3 echoes within 15s", "%d echoed (%v)", after.Echoed, errText(err))
	s.finish(20 * time.Second)
}
