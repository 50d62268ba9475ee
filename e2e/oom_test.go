//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/wsd-dev/wsd/chaos"
	"github.com/wsd-dev/wsd/chaos/wsdcontainer"
)

// TestMemoryLimitTurnsALeakIntoADetectedOOMKill is the suite's check on
// itself: the memory invariant relies on the container limit killing a
// wsd that holds more than the bound, and on the harness seeing it. Here
// wsd runs with the default backpressure (1 MiB pause level per
// connection) under a 24 MiB limit while 40 echo flooders stop reading:
// what they make it hold legitimately exceeds the limit, exactly as a
// leak would, so the kernel must kill it and ExitState must say so.
func TestMemoryLimitTurnsALeakIntoADetectedOOMKill(t *testing.T) {
	requireDocker(t)
	ctx := t.Context()
	wsdImg, _, err := buildImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nw := newNetwork(ctx, t)
	const limit = 24 << 20
	res := chaos.NewResult("oom-detection", "Self-check: 40 non-reading echo flooders against wsd with 1 MiB pause_bytes under a 24 MiB memory limit; the harness must report the OOM kill.")
	res.Fault("memory limit %s, 40 flooders × 4 MiB, repeated until wsd dies (60s at most)", chaos.MiB(limit))
	res.MemoryBound = limit
	var checker *chaos.Checker
	defer func() {
		var series []chaos.Sample
		if checker != nil {
			series = checker.Stop()
		}
		res.Finish(series)
		resultsMu.Lock()
		results = append(results, res)
		resultsMu.Unlock()
	}()
	wsd, err := wsdcontainer.Run(ctx, wsdImg, network.WithNetwork([]string{"wsd"}, nw),
		wsdcontainer.WithMemoryLimit(limit),
		wsdcontainer.WithConfig("limits.max_connections_per_ip", "1000"),
		wsdcontainer.WithConfig("log.level", "error"))
	testcontainers.CleanupContainer(t, wsd)
	if err != nil {
		t.Fatal(err)
	}
	defer wsd.Close()
	target := chaos.Target{WS: wsd.WSURL(), Admin: chaos.NewAdmin(wsd.AdminURL())}
	defer target.Admin.Close()
	checker = chaos.NewChecker(target.Admin, wsd.MemoryUsage, chaos.DefaultTolerance)
	checker.Start(ctx, 250*time.Millisecond)
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var lastFlood atomic.Value
	go func() {
		// The flood's own outcome does not matter (its connections die
		// with the process), but it is repeated until then and its last
		// error is kept for the failure message.
		for fctx.Err() == nil {
			out, err := chaos.Flood(fctx, target, chaos.FloodConfig{Conns: 40, Messages: 1024, Size: 4096, PauseWait: 30 * time.Second, Timeout: 60 * time.Second})
			lastFlood.Store(fmt.Sprintf("%+v (%v)", out, err))
		}
	}()
	var st wsdcontainer.ExitState
	err = chaos.Poll(ctx, 60*time.Second, 200*time.Millisecond, func() error {
		st, err = wsd.ExitState(ctx)
		if err != nil {
			return err
		}
		if st.Running {
			return fmt.Errorf("still running")
		}
		return nil
	})
	cancel()
	peak, mem := checker.Peak()
	if !res.Check("wsd was killed", err == nil, "container exited", "running=%v (%v)", st.Running, errText(err)) {
		t.Errorf("wsd survived a load over its memory limit: %v; peak buffered %d, paused %d, memory %s; last flood %v",
			err, peak.BufferedBytes, peak.Paused, chaos.MiB(mem), lastFlood.Load())
	}
	if !res.Check("the harness reports the OOM kill", st.OOMKilled, "OOMKilled=true", "OOMKilled=%v exit=%d", st.OOMKilled, st.ExitCode) {
		t.Errorf("exit state %+v: want OOMKilled", st)
	}
}
