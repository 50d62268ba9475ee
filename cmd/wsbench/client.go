package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/lxzan/gws"
	"golang.org/x/sync/errgroup"
)

// parseSources expands "127.0.0.2-127.0.0.9" or "127.0.0.2,127.0.0.3"
// into source addresses. One local IPv4 address gives about 28k
// ephemeral ports towards one server port; many connections need several.
func parseSources(spec string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := netip.ParseAddr(lo)
		if err != nil {
			return nil, fmt.Errorf("source address %q: %w", lo, err)
		}
		if !isRange {
			out = append(out, first)
			continue
		}
		last, err := netip.ParseAddr(hi)
		if err != nil {
			return nil, fmt.Errorf("source address %q: %w", hi, err)
		}
		if !first.Is4() || !last.Is4() || last.Less(first) {
			return nil, fmt.Errorf("source range %q: want two IPv4 addresses, low-high", part)
		}
		for a := first; ; a = a.Next() {
			out = append(out, a)
			if len(out) > 1024 {
				return nil, fmt.Errorf("source range %q: more than 1024 addresses", part)
			}
			if a == last {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no source address given")
	}
	return out, nil
}

// dialOptions describe how a set of connections is opened.
type dialOptions struct {
	url         string
	sources     []netip.Addr
	concurrency int // parallel handshakes
	rcvBuf      int // SO_RCVBUF for the socket before connect; 0: kernel default
}

// dialAll opens n WebSocket connections, handler(i) serving connection
// i, spreading them over the source addresses. It fails on the first
// refused or failed handshake (closing what it opened), so an admission
// cap that is too low shows up as an error naming the HTTP status.
func dialAll(ctx context.Context, o dialOptions, n int, handler func(i int) gws.Event) ([]*gws.Conn, error) {
	conns := make([]*gws.Conn, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(o.concurrency, 1))
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			c, err := dialOne(gctx, o, o.sources[i%len(o.sources)], handler(i))
			if err != nil {
				return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
			}
			conns[i] = c
			go c.ReadLoop()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		closeAll(conns)
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func dialOne(ctx context.Context, o dialOptions, src netip.Addr, h gws.Event) (*gws.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
	if o.rcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	if deadline, ok := ctx.Deadline(); ok {
		d.Deadline = deadline
	}
	c, resp, err := gws.NewClient(h, &gws.ClientOption{
		Addr:             o.url,
		HandshakeTimeout: 10 * time.Second,
		NewDialer:        func() (gws.Dialer, error) { return d, nil },
	})
	if err != nil {
		if resp != nil && resp.StatusCode != 0 && resp.StatusCode != 101 {
			return nil, fmt.Errorf("upgrade %s from %s: HTTP %s: %w", o.url, src, resp.Status, err)
		}
		return nil, fmt.Errorf("upgrade %s from %s: %w", o.url, src, err)
	}
	return c, nil
}

func closeAll(conns []*gws.Conn) {
	for _, c := range conns {
		if c != nil {
			_ = c.WriteClose(1000, nil)
			_ = c.NetConn().Close()
		}
	}
}

// baseEvent answers pings (wsd's heartbeat closes silent peers) and
// records unexpected closes; the modes embed it.
type baseEvent struct{ closed *atomic.Int64 }

func (baseEvent) OnOpen(*gws.Conn)                      {}
func (baseEvent) OnPong(*gws.Conn, []byte)              {}
func (baseEvent) OnPing(c *gws.Conn, p []byte)          { _ = c.WritePong(p) }
func (e baseEvent) OnClose(*gws.Conn, error)            { e.closed.Add(1) }
func (baseEvent) OnMessage(_ *gws.Conn, m *gws.Message) { _ = m.Close() }

// Payloads carry their send time (Unix ns) in the first 8 bytes, so a
// receiver on the same host measures one-way or round-trip latency.
const stampBytes = 8

func stamp(p []byte, t time.Time) { binary.LittleEndian.PutUint64(p, uint64(t.UnixNano())) }

func stampOf(p []byte) (time.Time, bool) {
	if len(p) < stampBytes {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.LittleEndian.Uint64(p))), true
}

// Latencies are recorded in microseconds, 1 µs to 60 s, 3 significant
// digits.
const (
	histMinUS = 1
	histMaxUS = 60_000_000
	histSig   = 3
)

// latencyRecorder is a set of HDR histograms, sharded so that the read
// loops of many connections do not serialise on one lock.
type latencyRecorder struct {
	shards [16]struct {
		mu sync.Mutex
		h  *hdrhistogram.Histogram
	}
	on atomic.Bool // record only inside the measurement window
	// since and until bound the publish stamps that count (Unix ns;
	// until 0: open): a message published before the window and
	// delivered inside it is not one of the window's messages, so
	// counting it would put the delivery ratio above 1.
	since, until atomic.Int64
}

// open starts the measurement window at t.
func (r *latencyRecorder) open(t time.Time) {
	r.since.Store(t.UnixNano())
	r.until.Store(0)
	r.on.Store(true)
}

// seal ends the window's publishes at t: later stamps are not counted,
// while messages published before t are still received and recorded.
func (r *latencyRecorder) seal(t time.Time) { r.until.Store(t.UnixNano()) }

// inWindow reports whether a message stamped at t belongs to the window.
func (r *latencyRecorder) inWindow(t time.Time) bool {
	ns := t.UnixNano()
	u := r.until.Load()
	return r.on.Load() && ns >= r.since.Load() && (u == 0 || ns <= u)
}

func newLatencyRecorder() *latencyRecorder {
	r := &latencyRecorder{}
	for i := range r.shards {
		r.shards[i].h = hdrhistogram.New(histMinUS, histMaxUS, histSig)
	}
	return r
}

func (r *latencyRecorder) record(shard int, d time.Duration) {
	if !r.on.Load() {
		return
	}
	us := min(max(d.Microseconds(), histMinUS), histMaxUS)
	s := &r.shards[shard%len(r.shards)]
	s.mu.Lock()
	_ = s.h.RecordValue(us)
	s.mu.Unlock()
}

// merged returns one histogram of everything recorded.
func (r *latencyRecorder) merged() *hdrhistogram.Histogram {
	out := hdrhistogram.New(histMinUS, histMaxUS, histSig)
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		out.Merge(s.h)
		s.mu.Unlock()
	}
	return out
}

// Latency is the summary of a latency histogram, in microseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p99_9_us"`
	Max   float64 `json:"max_us"`
	Mean  float64 `json:"mean_us"`
	Curve []Point `json:"curve,omitempty"` // percentile → µs, for the charts
}

// Point is one point of a chart series.
type Point struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}

func summarize(h *hdrhistogram.Histogram) Latency {
	l := Latency{
		Count: h.TotalCount(),
		P50:   float64(h.ValueAtQuantile(50)),
		P90:   float64(h.ValueAtQuantile(90)),
		P99:   float64(h.ValueAtQuantile(99)),
		P999:  float64(h.ValueAtQuantile(99.9)),
		Max:   float64(h.Max()),
		Mean:  h.Mean(),
	}
	if l.Count == 0 {
		return l
	}
	for _, q := range []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100} {
		l.Curve = append(l.Curve, Point{X: q, Y: float64(h.ValueAtQuantile(q))})
	}
	return l
}
