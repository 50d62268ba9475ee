package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// IdleStep is the server's resident memory with a number of idle
// connections open.
type IdleStep struct {
	Conns int   `json:"conns"`
	RSS   int64 `json:"rss_bytes"`
	// PerConn is (RSS - RSS with no connection) / Conns.
	PerConn float64 `json:"bytes_per_conn"`
	// Go runtime figures when the server exposes /debug/pprof (wsd):
	// goroutine stacks and heap in use, which make up the floor.
	StackInuse int64 `json:"stack_inuse_bytes,omitempty"`
	HeapInuse  int64 `json:"heap_inuse_bytes,omitempty"`
}

// IdleResult is the memory-per-connection curve of one server.
type IdleResult struct {
	RSS0  int64      `json:"rss_idle_bytes"` // no connection open
	Steps []IdleStep `json:"steps"`
	// Closed counts connections lost while held (must be 0).
	Closed int64 `json:"closed"`
}

// runIdle opens connections in steps (cumulative counts) on the echo
// endpoint, holds each step for hold, waits for the server's RSS to
// settle and records it. The connections send nothing but answer pings.
func runIdle(ctx context.Context, o dialOptions, pid int, steps []int, hold time.Duration, memstats func() (stack, heap int64, err error)) (IdleResult, error) {
	var res IdleResult
	s0, err := settledRSS(ctx, pid)
	if err != nil {
		return res, err
	}
	res.RSS0 = s0
	var lost atomic.Int64
	var held []*gws.Conn
	defer func() { closeAll(held) }()
	for _, n := range steps {
		add := n - len(held)
		if add < 0 {
			return res, fmt.Errorf("idle steps must increase, got %v", steps)
		}
		conns, err := dialAll(ctx, o, add, func(int) gws.Event { return baseEvent{closed: &lost} })
		if err != nil {
			return res, fmt.Errorf("idle: %d connections: %w", n, err)
		}
		held = append(held, conns...)
		if err := sleepCtx(ctx, hold); err != nil {
			return res, err
		}
		rss, err := settledRSS(ctx, pid)
		if err != nil {
			return res, err
		}
		step := IdleStep{Conns: n, RSS: rss, PerConn: float64(rss-s0) / float64(n)}
		if memstats != nil {
			if step.StackInuse, step.HeapInuse, err = memstats(); err != nil {
				return res, err
			}
		}
		res.Steps = append(res.Steps, step)
	}
	res.Closed = lost.Load()
	if res.Closed > 0 {
		return res, fmt.Errorf("idle: the server closed %d idle connections", res.Closed)
	}
	return res, nil
}

// settledRSS samples RSS every 250ms until it moved by less than 0.5%
// over the last second (the server finished the handshakes and their
// garbage), or 15s passed; it returns the last sample.
func settledRSS(ctx context.Context, pid int) (int64, error) {
	var hist []int64
	deadline := time.Now().Add(15 * time.Second)
	for {
		s, err := sampleProc(pid)
		if err != nil {
			return 0, err
		}
		hist = append(hist, s.rss)
		if n := len(hist); n >= 5 {
			lo, hi := hist[n-5], hist[n-5]
			for _, v := range hist[n-5:] {
				lo, hi = min(lo, v), max(hi, v)
			}
			if float64(hi-lo) <= 0.005*float64(hi) || time.Now().After(deadline) {
				return s.rss, nil
			}
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return 0, err
		}
	}
}
