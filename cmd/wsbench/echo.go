package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// echoConfig is one echo run against /ws/echo.
type echoConfig struct {
	dial     dialOptions
	conns    int
	size     int           // payload bytes (>= 8: it carries the send time)
	inflight int           // closed loop: messages outstanding per connection
	rate     float64       // open loop: messages per second over all connections; 0: closed loop
	warmup   time.Duration // excluded from every figure
	window   time.Duration // measured
	pid      int           // server process sampled for CPU and RSS; 0: none
}

// EchoResult is what one echo run measured in its window.
type EchoResult struct {
	Mode        string  `json:"mode"` // closed or open
	Conns       int     `json:"conns"`
	InFlight    int     `json:"in_flight,omitempty"`
	OfferedRate float64 `json:"offered_rate,omitempty"` // msgs/s, open loop
	PayloadSize int     `json:"payload_bytes"`
	Seconds     float64 `json:"seconds"`
	Messages    int64   `json:"messages"`   // echoes received in the window
	Throughput  float64 `json:"throughput"` // echoes per second
	// Round-trip latency; open loop measures from the scheduled send
	// time, so a stalled sender does not hide queueing (coordinated
	// omission).
	Latency Latency `json:"latency"`
	// Server figures over the window: CPU time, CPU per echoed message,
	// CPU utilisation (1.0 = one core busy) and RSS at the end.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	ServerCPUPerMsg  float64 `json:"server_cpu_us_per_msg"`
	ServerUtil       float64 `json:"server_cpu_util"`
	ServerRSS        int64   `json:"server_rss_bytes"`
	ClosedConns      int64   `json:"closed_conns"` // connections lost during the run
}

// echoConn is the client side of one echo connection.
type echoConn struct {
	baseEvent
	idx      int
	rec      *latencyRecorder
	count    *atomic.Int64
	closed   bool // closed loop: answer each echo with a new message
	stop     *atomic.Bool
	buf      []byte
	writeErr *atomic.Int64
}

func (e *echoConn) OnMessage(c *gws.Conn, m *gws.Message) {
	now := time.Now()
	if t, ok := stampOf(m.Bytes()); ok {
		e.rec.record(e.idx, now.Sub(t))
	}
	_ = m.Close()
	e.count.Add(1)
	if !e.closed || e.stop.Load() {
		return
	}
	stamp(e.buf, now)
	if err := c.WriteMessage(gws.OpcodeBinary, e.buf); err != nil {
		e.writeErr.Add(1)
	}
}

// runEcho runs closed-loop echo (cfg.rate == 0: each connection keeps
// cfg.inflight messages outstanding) or open-loop echo (messages sent at
// cfg.rate over all connections whatever the replies do).
func runEcho(ctx context.Context, cfg echoConfig) (EchoResult, error) {
	if cfg.size < stampBytes {
		return EchoResult{}, fmt.Errorf("payload size %d: must be at least %d bytes", cfg.size, stampBytes)
	}
	if cfg.conns <= 0 || (cfg.rate == 0 && cfg.inflight <= 0) || cfg.rate < 0 {
		return EchoResult{}, fmt.Errorf("echo: need conns > 0 and in-flight > 0 (closed loop) or rate > 0 (open loop)")
	}
	res := EchoResult{Mode: "closed", Conns: cfg.conns, InFlight: cfg.inflight, PayloadSize: cfg.size}
	if cfg.rate > 0 {
		res = EchoResult{Mode: "open", Conns: cfg.conns, OfferedRate: cfg.rate, PayloadSize: cfg.size}
	}
	var (
		rec              = newLatencyRecorder()
		count, lost, wer atomic.Int64
		stop             atomic.Bool
	)
	conns, err := dialAll(ctx, cfg.dial, cfg.conns, func(i int) gws.Event {
		return &echoConn{baseEvent: baseEvent{closed: &lost}, idx: i, rec: rec, count: &count,
			closed: cfg.rate == 0, stop: &stop, buf: make([]byte, cfg.size), writeErr: &wer}
	})
	if err != nil {
		return res, fmt.Errorf("echo: %w", err)
	}
	defer closeAll(conns)

	pacerDone := make(chan error, 1)
	if cfg.rate == 0 {
		buf := make([]byte, cfg.size)
		for _, c := range conns {
			for range cfg.inflight {
				stamp(buf, time.Now())
				if err := c.WriteMessage(gws.OpcodeBinary, buf); err != nil {
					return res, fmt.Errorf("echo: first send: %w", err)
				}
			}
		}
		close(pacerDone)
	} else {
		go func() { pacerDone <- pace(ctx, conns, cfg.rate, cfg.size, &stop, nil, nil) }()
	}

	if err := sleepCtx(ctx, cfg.warmup); err != nil {
		return res, err
	}
	var before procSample
	if cfg.pid > 0 {
		if before, err = sampleProc(cfg.pid); err != nil {
			return res, err
		}
	}
	start, n0 := time.Now(), count.Load()
	rec.on.Store(true)
	if err := sleepCtx(ctx, cfg.window); err != nil {
		return res, err
	}
	rec.on.Store(false)
	n1, end := count.Load(), time.Now()
	stop.Store(true)
	if cfg.pid > 0 {
		after, err := sampleProc(cfg.pid)
		if err != nil {
			return res, err
		}
		cpu := after.cpu - before.cpu
		res.ServerCPUSeconds = cpu.Seconds()
		res.ServerUtil = cpu.Seconds() / after.at.Sub(before.at).Seconds()
		res.ServerRSS = after.rss
		if n1 > n0 {
			res.ServerCPUPerMsg = float64(cpu.Microseconds()) / float64(n1-n0)
		}
	}
	if err, ok := <-pacerDone; ok && err != nil {
		return res, fmt.Errorf("echo: sender: %w", err)
	}
	res.Seconds = end.Sub(start).Seconds()
	res.Messages = n1 - n0
	res.Throughput = float64(res.Messages) / res.Seconds
	res.Latency = summarize(rec.merged())
	res.ClosedConns = lost.Load()
	if res.ClosedConns > 0 || wer.Load() > 0 {
		return res, fmt.Errorf("echo: %d connections closed and %d writes failed during the run", res.ClosedConns, wer.Load())
	}
	if res.Messages == 0 {
		return res, errors.New("echo: no echo received in the measurement window")
	}
	return res, nil
}

// pace sends messages at rate per second, round-robin over conns, until
// stop. Each message carries its scheduled send time, not the actual
// one, so latency includes any delay of the sender itself.
// sent, when not nil, counts the messages written whose stamp is in
// win's measurement window (every message when win is nil), so that the
// count and the receivers' (latencyRecorder.inWindow) judge the same
// stamps.
func pace(ctx context.Context, conns []*gws.Conn, rate float64, size int, stop *atomic.Bool, sent *atomic.Int64, win *latencyRecorder) error {
	buf := make([]byte, size)
	interval := time.Duration(float64(time.Second) / rate)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var n int64
	for !stop.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		// Message n is due at start + n/rate: message 0 at once.
		due := int64(time.Since(start).Seconds()*rate) + 1
		for ; n < due && !stop.Load(); n++ {
			at := start.Add(time.Duration(n) * interval)
			stamp(buf, at)
			if err := conns[n%int64(len(conns))].WriteMessage(gws.OpcodeBinary, buf); err != nil {
				return fmt.Errorf("message %d: %w", n, err)
			}
			if sent != nil && (win == nil || win.inWindow(at)) {
				sent.Add(1)
			}
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
