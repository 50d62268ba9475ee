//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/chaos"
)

// Scenario 8: graceful shutdown under load. SIGTERM with 500 clients
// connected (echo and topic) and a publisher fanning out: every client
// gets 1001 and the container exits 0 within drain_timeout.
func TestGracefulShutdown(t *testing.T) {
	const echo, subs = 400, 100
	const drain = 5 * time.Second
	s := startStack(t, "graceful-shutdown",
		fmt.Sprintf("%d echo clients and %d subscribers with a publisher at 200 msg/s; SIGTERM; drain_timeout %s.", echo, subs, drain),
		stackOpts{conns: echo + subs + 1, config: map[string]string{
			"shutdown.drain_timeout": drain.String(),
		}})
	echoPeers, err := chaos.OpenPeers(s.ctx, s.target.EchoURL(), echo, chaos.PeerLive)
	if err != nil {
		echoPeers.Close() // the ones opened before the error
		s.fatal("echo clients: %v", err)
	}
	defer echoPeers.Close()
	topic := "chaos-shutdown"
	subPeers, err := chaos.OpenPeers(s.ctx, s.target.TopicURL(topic), subs, chaos.PeerLive)
	if err != nil {
		subPeers.Close() // the ones opened before the error
		s.fatal("subscribers: %v", err)
	}
	defer subPeers.Close()
	pub, err := chaos.Dial(s.ctx, s.target.TopicURL(topic))
	if err != nil {
		s.fatal("publisher: %v", err)
	}
	defer pub.Close()
	pubCode := make(chan uint16, 1)
	go func() { code, _, _ := pub.ReadUntilClose(time.Minute); pubCode <- code }()
	pctx, stopPub := context.WithCancel(s.ctx)
	defer stopPub()
	go func() {
		for pctx.Err() == nil {
			if pub.WriteMessage(chaos.OpText, []byte("tick")) != nil {
				return
			}
			select {
			case <-pctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	// Echo traffic in flight as well.
	for _, c := range echoPeers.Conns()[:50] {
		_ = c.WriteMessage(chaos.OpBinary, make([]byte, 512))
	}
	if err := chaos.Poll(s.ctx, 10*time.Second, 50*time.Millisecond, func() error {
		st, err := s.target.Admin.Stats(s.ctx)
		if err != nil {
			return err
		}
		if st.Connections < echo+subs+1 {
			return fmt.Errorf("%d connections", st.Connections)
		}
		return nil
	}); err != nil {
		s.fatal("clients not registered: %v", err)
	}

	s.res.Fault("SIGTERM with %d clients connected", echo+subs+1)
	signalled := time.Now()
	if err := s.wsd.Signal(s.ctx, "SIGTERM"); err != nil {
		s.fatal("%v", err)
	}
	slack := 10 * time.Second
	errEcho := echoPeers.WaitEnded(s.ctx, drain+slack)
	errSubs := subPeers.WaitEnded(s.ctx, drain+slack)
	stopPub()
	_, echoCodes := echoPeers.Ended()
	_, subCodes := subPeers.Ended()
	got1001 := echoCodes[1001] + subCodes[1001]
	var pcode uint16
	select {
	case pcode = <-pubCode:
	case <-time.After(drain + slack):
	}
	if pcode == 1001 {
		got1001++
	}
	s.check("every client got 1001", got1001 == echo+subs+1 && errEcho == nil && errSubs == nil,
		fmt.Sprintf("%d × 1001", echo+subs+1), "%d × 1001; echo codes %v, subscriber codes %v, publisher %d", got1001, echoCodes, subCodes, pcode)

	var st struct {
		running bool
		code    int
		oom     bool
		took    time.Duration
	}
	err = chaos.Poll(s.ctx, drain+slack, 100*time.Millisecond, func() error {
		es, err := s.wsd.ExitState(s.ctx)
		if err != nil {
			return err
		}
		st.running, st.code, st.oom = es.Running, es.ExitCode, es.OOMKilled
		st.took = es.FinishedAt.Sub(signalled)
		if es.Running {
			return fmt.Errorf("still running")
		}
		return nil
	})
	s.check("container exited within drain_timeout (+ slack)", err == nil, fmt.Sprintf("exited within %s", drain+slack), "running=%v (%v)", st.running, errText(err))
	s.check("exit code 0", !st.running && st.code == 0, "0", "%d", st.code)
	s.check("not OOM-killed", !st.oom, "OOMKilled=false", "OOMKilled=%v", st.oom)
	// Every client answers the close, so the drain must finish by itself:
	// wsd logs a warning when drain_timeout forces the rest closed.
	forced := strings.Contains(s.wsd.LogText(s.ctx), "drain timeout")
	s.check("drain completed without force-closing", !forced, "no \"drain timeout\" warning in the log", "forced=%v", forced)
	s.res.Note("exit %.2fs after SIGTERM (engine timestamps)", st.took.Seconds())
	s.checker.Stop()
	inv := s.checker.CheckMemory(s.bound)
	s.check(inv.Name, inv.Pass, inv.Want, "%s", inv.Got)
}
