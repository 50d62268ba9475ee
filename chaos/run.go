package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// RunConfig is a scenario run against any wsd (the wschaos command).
type RunConfig struct {
	Target Target
	// Scenario is one of Scenarios.
	Scenario string
	// Duration: rounds start until it elapses; the last round may end a
	// little later (each round is bounded by RoundTimeout).
	Duration time.Duration
	// RoundTimeout bounds one round (default 60s).
	RoundTimeout time.Duration
	// MaxMessageBytes and HandshakeTimeout are the server's limits, for
	// the abuse cases (defaults: wsd's defaults, 64 KiB and 5s).
	MaxMessageBytes  int
	HandshakeTimeout time.Duration
	// Out receives one summary line per round (default io.Discard).
	Out io.Writer
}

// Scenarios lists the scenario names Run accepts.
var Scenarios = []string{"slow-consumers", "flooder", "half-open", "churn", "abuse", "demo"}

// round is one bounded unit of a scenario; it returns its summary line.
type round func(ctx context.Context, n int) (string, error)

// Run repeats the scenario's round until Duration elapses or ctx is
// cancelled (SIGINT), writing one summary line per round. It returns nil
// when it ran to the end or was cancelled, and an error for a bad
// configuration or an unreachable target.
func Run(ctx context.Context, cfg RunConfig) error {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.RoundTimeout == 0 {
		cfg.RoundTimeout = 60 * time.Second
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 64 << 10
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 5 * time.Second
	}
	if cfg.Duration <= 0 {
		return fmt.Errorf("duration must be > 0, got %s", cfg.Duration)
	}
	if cfg.Target.Admin == nil || cfg.Target.WS == "" {
		return errors.New("target and admin URLs are required")
	}
	if !strings.HasPrefix(cfg.Target.WS, "ws://") {
		return fmt.Errorf("target %q: want ws://host:port", cfg.Target.WS)
	}
	if err := cfg.Target.Admin.Healthz(ctx); err != nil {
		return fmt.Errorf("admin not reachable: %w", err)
	}
	d := &demo{cfg: cfg}
	defer d.closeSilent()
	rounds := map[string]round{
		"slow-consumers": d.topicRound,
		"flooder":        d.floodRound,
		"half-open":      d.silentRound,
		"churn":          d.churnRound,
		"abuse":          d.abuseRound,
		"demo":           d.demoRound,
	}
	r, ok := rounds[cfg.Scenario]
	if !ok {
		return fmt.Errorf("unknown scenario %q (want one of %s)", cfg.Scenario, strings.Join(Scenarios, ", "))
	}
	end := time.Now().Add(cfg.Duration)
	for n := 1; time.Now().Before(end) && ctx.Err() == nil; n++ {
		started := time.Now()
		rctx, cancel := context.WithTimeout(ctx, cfg.RoundTimeout)
		line, err := r(rctx, n)
		cancel()
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			line += " error: " + err.Error()
		}
		if st, serr := cfg.Target.Admin.Stats(ctx); serr == nil {
			line += fmt.Sprintf(" | server: conns=%d paused=%d buffered=%d fds=%d goroutines=%d evicted=%d dropped=%d heartbeat_timeouts=%d",
				st.Connections, st.Paused, st.BufferedBytes, st.OpenFDs, st.Goroutines, st.EvictedTotal, st.DroppedTotal, st.HeartbeatTimeoutsTotal)
		}
		fmt.Fprintf(cfg.Out, "%s round %d [%s]: %s\n", time.Now().UTC().Format("15:04:05"), n, cfg.Scenario, line)
		// Rounds start at most once per minRound, so a quick round (a
		// sweep of silent peers) does not spin.
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(started.Add(minRound))):
		}
	}
	return nil
}

// demo holds state that lives across rounds: silent peers wait for the
// server's heartbeat to reap them, which takes longer than a round.
type demo struct {
	cfg    RunConfig
	mu     sync.Mutex
	silent []silentPeer
	reaped int
}

type silentPeer struct {
	c      *Conn
	opened time.Time
}

// minRound is the shortest period between round starts.
const minRound = time.Second

// maxSilent bounds the silent peers held open at once.
const maxSilent = 100

func (d *demo) topicRound(ctx context.Context, n int) (string, error) {
	before, err := d.cfg.Target.Admin.Stats(ctx)
	if err != nil {
		return "", err
	}
	out, err := SlowConsumers(ctx, d.cfg.Target, TopicConfig{
		Topic: fmt.Sprintf("wschaos-%d", n%8), Fast: 8, Slow: 4, Messages: 2000, Size: 4096,
		PublishRate: 800, SlowReadRate: 4096, SlowRecvBuffer: 4096, Timeout: d.cfg.RoundTimeout,
	})
	after, _ := d.cfg.Target.Admin.Stats(ctx)
	complete := 0
	for _, f := range out.Fast {
		if f.Received == out.Published && f.InOrder {
			complete++
		}
	}
	codes := map[uint16]int{}
	for _, s := range out.Slow {
		if s.Ended {
			codes[s.CloseCode]++
		}
	}
	return fmt.Sprintf("topic: published %d; fast %d/%d complete in order; slow %d: ended %s, evicted +%d, dropped +%d",
		out.Published, complete, len(out.Fast), len(out.Slow), codeList(codes),
		after.EvictedTotal-before.EvictedTotal, after.DroppedTotal-before.DroppedTotal), err
}

func (d *demo) floodRound(ctx context.Context, _ int) (string, error) {
	out, err := Flood(ctx, d.cfg.Target, FloodConfig{Conns: 4, Messages: 2000, Size: 4096, PauseWait: 10 * time.Second, Timeout: d.cfg.RoundTimeout})
	return fmt.Sprintf("flooder: paused seen %d; sent %d, echoed %d, lost %d, out of order %d, closed %d",
		out.PausedSeen, out.Sent, out.Echoed, out.Lost, out.OutOfOrder, out.Closed), err
}

// silentRound opens silent peers (no reads, no pongs) and counts those
// the server has reaped since: a reaped peer's socket reads EOF.
func (d *demo) silentRound(ctx context.Context, _ int) (string, error) {
	d.mu.Lock()
	room := maxSilent - len(d.silent)
	d.mu.Unlock()
	opened := 0
	var err error
	if room > 0 {
		var p *Peers
		p, err = OpenPeers(ctx, d.cfg.Target.EchoURL(), min(room, 20), PeerSilent)
		d.mu.Lock()
		for _, c := range p.Conns() {
			// Their life is the demo's, not the round's: unhook the
			// round context.
			c.release()
			d.silent = append(d.silent, silentPeer{c: c, opened: time.Now()})
		}
		d.mu.Unlock()
		opened = p.Len()
	}
	reaped, open := d.sweepSilent()
	return fmt.Sprintf("half-open: %d silent peers opened, %d reaped by the server so far, %d waiting", opened, reaped, open), err
}

func (d *demo) sweepSilent() (reaped, open int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	keep := d.silent[:0]
	buf := make([]byte, 4096)
	for _, p := range d.silent {
		if peerClosed(p.c.NetConn(), buf) {
			d.reaped++
			_ = p.c.Close()
			continue
		}
		keep = append(keep, p)
	}
	d.silent = keep
	return d.reaped, len(d.silent)
}

// peerClosed drains what the server sent (pings, its close frame) without
// waiting and reports whether the connection has ended.
func peerClosed(nc net.Conn, buf []byte) bool {
	for {
		_ = nc.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := nc.Read(buf)
		var ne net.Error
		switch {
		case err == nil:
			continue
		case errors.As(err, &ne) && ne.Timeout():
			return false
		default:
			return true
		}
	}
}

func (d *demo) closeSilent() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.silent {
		_ = p.c.Close()
	}
	d.silent = nil
}

func (d *demo) churnRound(ctx context.Context, _ int) (string, error) {
	out, err := Churn(ctx, d.cfg.Target, ChurnConfig{Cycles: 1000, Workers: 16, Timeout: d.cfg.RoundTimeout})
	return fmt.Sprintf("churn: %d cycles (graceful %d, resets %d, dropped %d), refused %d, failed %d",
		out.Cycles, out.Graceful, out.Resets, out.Dropped, out.Refused, out.Failed), err
}

func (d *demo) abuseRound(ctx context.Context, _ int) (string, error) {
	cases := Abuse(ctx, d.cfg.Target, AbuseConfig{MaxMessageBytes: d.cfg.MaxMessageBytes, HandshakeTimeout: d.cfg.HandshakeTimeout, Slowloris: 5})
	ok := 0
	var bad []string
	for _, c := range cases {
		if c.Pass {
			ok++
		} else {
			bad = append(bad, fmt.Sprintf("%s: want %s, got %s", c.Name, c.Want, c.Got))
		}
	}
	line := fmt.Sprintf("abuse: %d/%d answered as documented", ok, len(cases))
	if len(bad) > 0 {
		line += "; " + strings.Join(bad, "; ")
	}
	return line, nil
}

// demoRound mixes every kind of client at once: normal echo and topic
// traffic, slow subscribers, silent peers and abusive clients.
func (d *demo) demoRound(ctx context.Context, n int) (string, error) {
	type part struct {
		line string
		err  error
	}
	parts := make([]part, 4)
	var wg sync.WaitGroup
	run := func(i int, f func() (string, error)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := f()
			parts[i] = part{l, err}
		}()
	}
	run(0, func() (string, error) {
		out := EchoLoad(ctx, d.cfg.Target, EchoConfig{Clients: 20, Messages: 20, Size: 256})
		var err error
		if out.Failed > 0 {
			err = errors.New(out.FirstError)
		}
		return fmt.Sprintf("echo: %d/%d echoed, %d mismatched", out.Echoed, out.Sent, out.Mismatched), err
	})
	run(1, func() (string, error) { return d.topicRound(ctx, n) })
	run(2, func() (string, error) { return d.silentRound(ctx, n) })
	run(3, func() (string, error) {
		cases := Abuse(ctx, d.cfg.Target, AbuseConfig{MaxMessageBytes: d.cfg.MaxMessageBytes, HandshakeTimeout: d.cfg.HandshakeTimeout, Slowloris: 2})
		ok := 0
		for _, c := range cases {
			if c.Pass {
				ok++
			}
		}
		return fmt.Sprintf("abuse: %d/%d as documented", ok, len(cases)), nil
	})
	wg.Wait()
	var lines []string
	var errs []error
	for _, p := range parts {
		lines = append(lines, p.line)
		if p.err != nil {
			errs = append(errs, p.err)
		}
	}
	return strings.Join(lines, "; "), errors.Join(errs...)
}

func codeList(m map[uint16]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, int(k))
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := fmt.Sprint(k)
		if k == 0 {
			name = "no-frame"
		}
		parts = append(parts, fmt.Sprintf("%d×%s", m[uint16(k)], name))
	}
	return strings.Join(parts, " ")
}

// ValidScenario reports whether name is one of Scenarios.
func ValidScenario(name string) bool { return slices.Contains(Scenarios, name) }
