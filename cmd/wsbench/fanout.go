package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// fanoutConfig is one fan-out run: a publisher and subscribers on one
// topic (/ws/topics/{topic}); the server sends each published message to
// every other connection of the topic.
type fanoutConfig struct {
	dial   dialOptions // url is the topic endpoint
	subs   int         // subscribers, slow ones included
	slow   int         // subscribers that stop reading after their first message
	rate   float64     // published messages per second
	size   int         // payload bytes (>= 8)
	warmup time.Duration
	window time.Duration
	pid    int           // server process; 0: none
	every  time.Duration // server RSS sampling period
}

// FanoutResult is what one fan-out run measured.
type FanoutResult struct {
	Subscribers int     `json:"subscribers"`
	Slow        int     `json:"slow_subscribers"`
	Rate        float64 `json:"publish_rate"`
	PayloadSize int     `json:"payload_bytes"`
	Seconds     float64 `json:"seconds"`
	Published   int64   `json:"published"` // in the window
	// Delivered counts messages received by fast subscribers in the
	// window; DeliveryRatio is Delivered / (Published × fast subscribers)
	// (about 1: nothing lost, nothing stuck).
	Delivered     int64   `json:"delivered"`
	DeliveryRatio float64 `json:"delivery_ratio"`
	// Latency is publish-to-delivery for fast subscribers only.
	Latency Latency `json:"latency"`
	// Server figures: CPU over the window, RSS before the publisher
	// started, at the end and the highest sample, with the samples.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	ServerRSSStart   int64   `json:"server_rss_start_bytes"`
	ServerRSSEnd     int64   `json:"server_rss_end_bytes"`
	ServerRSSMax     int64   `json:"server_rss_max_bytes"`
	RSSSeries        []Point `json:"rss_series,omitempty"` // seconds since publishing began → MiB
	// FastClosed counts fast subscribers the server closed (must be 0).
	// Slow ones are not counted here: their read loop is blocked, so
	// they notice a close only at the end (wsd reports evictions in
	// /debug/stats).
	FastClosed int64 `json:"fast_closed"`
}

type subscriber struct {
	baseEvent
	idx     int
	rec     *latencyRecorder
	seen    *atomic.Int64 // subscribers that received anything
	got     atomic.Bool
	count   *atomic.Int64
	slow    bool
	release <-chan struct{} // a slow subscriber's read loop waits on it
}

func (s *subscriber) OnMessage(_ *gws.Conn, m *gws.Message) {
	now := time.Now()
	t, ok := stampOf(m.Bytes())
	_ = m.Close()
	if s.got.CompareAndSwap(false, true) {
		s.seen.Add(1)
	}
	if s.slow {
		// Stop reading: the server's queue for this connection grows
		// until it protects itself (or not).
		<-s.release
		return
	}
	if ok && t.UnixNano() != 0 && s.rec.inWindow(t) {
		s.count.Add(1)
		s.rec.record(s.idx, now.Sub(t))
	}
}

// runFanout connects subscribers, waits until each has received a probe
// (so every subscription is registered), then publishes at cfg.rate.
func runFanout(ctx context.Context, cfg fanoutConfig) (FanoutResult, error) {
	res := FanoutResult{Subscribers: cfg.subs, Slow: cfg.slow, Rate: cfg.rate, PayloadSize: cfg.size}
	if cfg.size < stampBytes || cfg.subs <= cfg.slow || cfg.rate <= 0 || cfg.slow < 0 {
		return res, fmt.Errorf("fan-out: need size >= %d, subscribers > slow >= 0, rate > 0", stampBytes)
	}
	var (
		rec                = newLatencyRecorder()
		seen, count        atomic.Int64
		fastLost, slowLost atomic.Int64
		pubLost            atomic.Int64
		release            = make(chan struct{})
		releaseOnce        sync.Once
	)
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	// Slow subscribers are spread evenly among the fast ones and get a
	// small receive buffer so their backlog reaches the server sooner.
	isSlow := func(i int) bool {
		return cfg.slow > 0 && i%(cfg.subs/cfg.slow) == 0 && i/(cfg.subs/cfg.slow) < cfg.slow
	}
	mk := func(i int) gws.Event {
		lost := &fastLost
		if isSlow(i) {
			lost = &slowLost
		}
		return &subscriber{baseEvent: baseEvent{closed: lost}, idx: i, rec: rec, seen: &seen, count: &count,
			slow: isSlow(i), release: release}
	}
	var fast, slow []int
	for i := range cfg.subs {
		if isSlow(i) {
			slow = append(slow, i)
		} else {
			fast = append(fast, i)
		}
	}
	fastOpt, slowOpt := cfg.dial, cfg.dial
	slowOpt.rcvBuf = 4096
	fastConns, err := dialAll(ctx, fastOpt, len(fast), func(i int) gws.Event { return mk(fast[i]) })
	if err != nil {
		return res, fmt.Errorf("fan-out subscribers: %w", err)
	}
	defer closeAll(fastConns)
	slowConns, err := dialAll(ctx, slowOpt, len(slow), func(i int) gws.Event { return mk(slow[i]) })
	if err != nil {
		return res, fmt.Errorf("fan-out slow subscribers: %w", err)
	}
	defer func() { unblock(); closeAll(slowConns) }()
	pubs, err := dialAll(ctx, cfg.dial, 1, func(int) gws.Event { return baseEvent{closed: &pubLost} })
	if err != nil {
		return res, fmt.Errorf("fan-out publisher: %w", err)
	}
	defer closeAll(pubs)
	pub := pubs[0]

	// Probe (zero timestamp) until every subscriber has a message: a
	// server may answer the upgrade before registering the subscription.
	err = probe(ctx, "fan-out", pub, cfg.size, func() string {
		if seen.Load() < int64(cfg.subs) {
			return fmt.Sprintf("only %d of %d subscribers", seen.Load(), cfg.subs)
		}
		return ""
	})
	if err != nil {
		return res, err
	}

	var (
		samples []procSample
		smu     sync.Mutex
		stopS   = make(chan struct{})
		sdone   = make(chan struct{})
	)
	if cfg.pid > 0 {
		first, err := sampleProc(cfg.pid)
		if err != nil {
			return res, err
		}
		samples = append(samples, first)
		go func() {
			defer close(sdone)
			t := time.NewTicker(cfg.every)
			defer t.Stop()
			for {
				select {
				case <-stopS:
					return
				case <-t.C:
				}
				if s, err := sampleProc(cfg.pid); err == nil {
					smu.Lock()
					samples = append(samples, s)
					smu.Unlock()
				}
			}
		}()
	} else {
		close(sdone)
	}

	var before procSample
	w := window{rate: cfg.rate, size: cfg.size, warmup: cfg.warmup, length: cfg.window, grace: 200 * time.Millisecond,
		recs: []*latencyRecorder{rec}}
	w.begin = func() error {
		if cfg.pid > 0 {
			var err error
			if before, err = sampleProc(cfg.pid); err != nil {
				return err
			}
		}
		return nil
	}
	w.end = func() {
		rec.on.Store(false)
		close(stopS)
		<-sdone
	}
	if res.Seconds, res.Published, err = w.run(ctx, "fan-out", pubs); err != nil {
		return res, err
	}
	if cfg.pid > 0 {
		after, err := sampleProc(cfg.pid)
		if err != nil {
			return res, err
		}
		res.ServerCPUSeconds = (after.cpu - before.cpu).Seconds()
		samples = append(samples, after)
		res.ServerRSSStart, res.ServerRSSEnd = samples[0].rss, after.rss
		for _, s := range samples {
			res.ServerRSSMax = max(res.ServerRSSMax, s.rss)
			res.RSSSeries = append(res.RSSSeries, Point{X: s.at.Sub(samples[0].at).Seconds(), Y: float64(s.rss) / (1 << 20)})
		}
	}
	res.Delivered = count.Load()
	if res.Published > 0 {
		res.DeliveryRatio = float64(res.Delivered) / float64(res.Published*int64(len(fast)))
	}
	res.Latency = summarize(rec.merged())
	res.FastClosed = fastLost.Load()
	switch {
	case res.FastClosed > 0 || pubLost.Load() > 0:
		return res, fmt.Errorf("fan-out: the server closed %d fast subscribers and %d publishers", res.FastClosed, pubLost.Load())
	case res.Delivered == 0:
		return res, errors.New("fan-out: nothing delivered in the measurement window")
	}
	return res, nil
}

// probe sends zero-stamped messages (not counted) on pub every 50ms
// until pending returns "": a server may answer the upgrade before
// registering the subscription, so a run starts once every subscriber
// has had one. Otherwise pending says who is missing; after 60s that is
// the error. name starts every error ("fan-out").
func probe(ctx context.Context, name string, pub *gws.Conn, size int, pending func() string) error {
	buf := make([]byte, size)
	probeUntil := time.Now().Add(60 * time.Second)
	for {
		missing := pending()
		if missing == "" {
			return nil
		}
		if time.Now().After(probeUntil) {
			return fmt.Errorf("%s: %s received a probe within 60s", name, missing)
		}
		stamp(buf, time.Unix(0, 0))
		if err := pub.WriteMessage(gws.OpcodeBinary, buf); err != nil {
			return fmt.Errorf("%s probe: %w", name, err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// window is one measured publishing run shared by the fan-out
// benchmarks: the publishers send at rate for warmup, then begin starts
// the measurement (process samples, latency recording), they send for
// length more and stop; after grace, so that messages still in flight
// are counted without new publishes, end stops the measurement.
type window struct {
	rate                  float64
	size                  int
	warmup, length, grace time.Duration
	begin                 func() error
	end                   func()
	// recs are the receivers' recorders: the window opens and seals
	// them, and publishes are counted by the first one's window (by
	// publish stamp, as the receivers count deliveries).
	recs []*latencyRecorder
}

// run publishes on pubs as w says and returns the measured window's
// length in seconds and the messages published in it. It fails when
// ctx ends, begin fails or a publisher fails; name starts the
// publisher's error ("fan-out publisher: ...").
func (w window) run(ctx context.Context, name string, pubs []*gws.Conn) (float64, int64, error) {
	var published atomic.Int64
	stop := atomic.Bool{}
	pubErr := make(chan error, 1)
	go func() { pubErr <- pace(ctx, pubs, w.rate, w.size, &stop, &published, w.recs[0]) }()
	if err := sleepCtx(ctx, w.warmup); err != nil {
		return 0, 0, err
	}
	if err := w.begin(); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for _, r := range w.recs {
		r.open(start)
	}
	if err := sleepCtx(ctx, w.length); err != nil {
		return 0, 0, err
	}
	stop.Store(true)
	end := time.Now()
	for _, r := range w.recs {
		r.seal(end)
	}
	_ = sleepCtx(ctx, w.grace)
	w.end()
	if err := <-pubErr; err != nil {
		return 0, 0, fmt.Errorf("%s publisher: %w", name, err)
	}
	return end.Sub(start).Seconds(), published.Load(), nil // stamped inside the window
}
