package chaos

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// Tolerance is how far a counter may stay above its pre-scenario
// baseline after the quiet period and still count as "back". Load
// counters (connections, paused, buffered bytes, subscribers, handshakes,
// per-IP entries) must return exactly; descriptors and goroutines get a
// small slack because the admin connection the checker itself uses and
// the runtime's own helpers (netpoller, timers, GC workers started under
// load) come and go independently of any session.
type Tolerance struct {
	// OpenFDs: extra descriptors allowed (default 4).
	OpenFDs int64
	// Goroutines: extra goroutines allowed (default 8).
	Goroutines int
}

// DefaultTolerance is the documented slack: 4 descriptors, 8 goroutines.
var DefaultTolerance = Tolerance{OpenFDs: 4, Goroutines: 8}

// MemoryFunc returns the server's current memory use in bytes (e.g. the
// container's cgroup usage).
type MemoryFunc func(ctx context.Context) (int64, error)

// Sample is one point of a scenario's time series.
type Sample struct {
	// T is seconds since the checker started sampling.
	T             float64 `json:"t"`
	OpenFDs       int64   `json:"open_fds"`
	Goroutines    int     `json:"goroutines"`
	Connections   int64   `json:"connections"`
	Paused        int64   `json:"paused"`
	BufferedBytes int64   `json:"buffered_bytes"`
	Subscribers   int     `json:"subscribers"`
	// MemoryBytes is -1 when no MemoryFunc is set or it failed.
	MemoryBytes int64 `json:"memory_bytes"`
}

// Checker samples a wsd's /debug/stats (and memory) during a scenario
// and proves afterwards that every counter returned to its baseline.
// Use: NewChecker, Baseline, Start, run the scenario, Stop, CheckBaseline.
type Checker struct {
	admin *Admin
	mem   MemoryFunc
	tol   Tolerance

	base  service.Stats
	start time.Time

	mu      sync.Mutex
	series  []Sample
	maxMem  int64
	lastMem int64 // -1 until the first memory sample
	maxSeen service.Stats
	errs    int
	stop    context.CancelFunc
	done    chan struct{}
}

// NewChecker returns a checker for admin; mem may be nil.
func NewChecker(admin *Admin, mem MemoryFunc, tol Tolerance) *Checker {
	return &Checker{admin: admin, mem: mem, tol: tol, maxMem: -1, lastMem: -1}
}

// Baseline records the pre-scenario counters. It first waits (up to
// settle) for the load counters to read zero and for descriptors and
// goroutines to stop changing between samples, so the baseline is not
// taken mid-startup.
func (c *Checker) Baseline(ctx context.Context, settle time.Duration) (service.Stats, error) {
	deadline := time.Now().Add(settle)
	var prev service.Stats
	stable := 0
	for {
		st, err := c.admin.Stats(ctx)
		if err != nil {
			return st, fmt.Errorf("baseline: %w", err)
		}
		quiet := st.Connections == 0 && st.Paused == 0 && st.BufferedBytes == 0 && st.Handshakes == 0
		if quiet && st.OpenFDs == prev.OpenFDs && st.Goroutines == prev.Goroutines {
			stable++
		} else {
			stable = 0
		}
		prev = st
		if stable >= 2 || time.Now().After(deadline) {
			c.base = st
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// BaselineStats returns the recorded baseline.
func (c *Checker) BaselineStats() service.Stats { return c.base }

// Start samples every interval until Stop.
func (c *Checker) Start(ctx context.Context, every time.Duration) {
	ctx, c.stop = context.WithCancel(ctx)
	c.done = make(chan struct{})
	c.start = time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			c.sample(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	if c.mem != nil {
		// A container stats read takes up to a second: it runs on its own
		// loop so the counters keep their pace.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				m, err := c.mem(sctx)
				cancel()
				if err == nil {
					c.mu.Lock()
					c.lastMem = m
					c.maxMem = max(c.maxMem, m)
					c.mu.Unlock()
				}
				select {
				case <-ctx.Done():
				case <-time.After(every):
				}
			}
		}()
	}
	go func() { wg.Wait(); close(c.done) }()
}

// sample takes one point; errors (an admin request refused under load)
// are counted, not fatal: the checks after the scenario decide.
func (c *Checker) sample(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := c.admin.Stats(sctx)
	c.mu.Lock()
	mem := c.lastMem
	defer c.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			c.errs++
		}
		return
	}
	c.series = append(c.series, Sample{
		T: time.Since(c.start).Seconds(), OpenFDs: st.OpenFDs, Goroutines: st.Goroutines,
		Connections: st.Connections, Paused: st.Paused, BufferedBytes: st.BufferedBytes,
		Subscribers: st.Subscribers, MemoryBytes: mem,
	})
	m := &c.maxSeen
	m.OpenFDs = max(m.OpenFDs, st.OpenFDs)
	m.Goroutines = max(m.Goroutines, st.Goroutines)
	m.Connections = max(m.Connections, st.Connections)
	m.Paused = max(m.Paused, st.Paused)
	m.BufferedBytes = max(m.BufferedBytes, st.BufferedBytes)
	m.Subscribers = max(m.Subscribers, st.Subscribers)
}

// Stop ends sampling, takes a last sample and returns the series.
func (c *Checker) Stop() []Sample {
	if c.stop != nil {
		c.stop()
		<-c.done
		c.stop = nil
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c.sample(ctx)
		cancel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Sample(nil), c.series...)
}

// Series returns the samples so far.
func (c *Checker) Series() []Sample {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Sample(nil), c.series...)
}

// Peak returns the highest value of each counter seen while sampling and
// the highest memory sample (-1: none).
func (c *Checker) Peak() (service.Stats, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxSeen, c.maxMem
}

// SampleErrors returns how many samples failed.
func (c *Checker) SampleErrors() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errs
}

// CheckBaseline polls /debug/stats until every counter is back within
// tolerance of the baseline or quiet elapses, and returns one invariant
// per counter with the last measured value.
func (c *Checker) CheckBaseline(ctx context.Context, quiet time.Duration) []Invariant {
	deadline := time.Now().Add(quiet)
	start := time.Now()
	for {
		st, err := c.admin.Stats(ctx)
		var inv []Invariant
		if err != nil {
			inv = []Invariant{{Name: "stats reachable", Want: "GET /debug/stats 200", Got: err.Error()}}
		} else {
			inv = c.compare(st)
		}
		ok := true
		for _, i := range inv {
			ok = ok && i.Pass
		}
		if ok || time.Now().After(deadline) || ctx.Err() != nil {
			for k := range inv {
				inv[k].Got += fmt.Sprintf(" (after %.1fs)", time.Since(start).Seconds())
			}
			return inv
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Checker) compare(st service.Stats) []Invariant {
	b := c.base
	exact := func(name string, base, got int64) Invariant {
		return Invariant{Name: name + " back to baseline", Want: fmt.Sprintf("= %d", base), Got: fmt.Sprint(got), Pass: got == base}
	}
	return []Invariant{
		{Name: "open_fds back to baseline", Want: fmt.Sprintf("<= %d (baseline %d + %d)", b.OpenFDs+c.tol.OpenFDs, b.OpenFDs, c.tol.OpenFDs),
			Got: fmt.Sprint(st.OpenFDs), Pass: st.OpenFDs <= b.OpenFDs+c.tol.OpenFDs},
		{Name: "goroutines back to baseline", Want: fmt.Sprintf("<= %d (baseline %d + %d)", b.Goroutines+c.tol.Goroutines, b.Goroutines, c.tol.Goroutines),
			Got: fmt.Sprint(st.Goroutines), Pass: st.Goroutines <= b.Goroutines+c.tol.Goroutines},
		exact("connections", b.Connections, st.Connections),
		exact("paused", b.Paused, st.Paused),
		exact("buffered_bytes", b.BufferedBytes, st.BufferedBytes),
		exact("subscribers", int64(b.Subscribers), int64(st.Subscribers)),
		exact("handshakes", b.Handshakes, st.Handshakes),
		exact("ip_entries", int64(b.IPEntries), int64(st.IPEntries)),
		exact("user_entries", int64(b.UserEntries), int64(st.UserEntries)),
		// A recovered panic closed a connection instead of ending the
		// process, but it is still a bug a scenario must not pass with.
		exact("panics_total", b.PanicsTotal, st.PanicsTotal),
	}
}

// CheckMemory returns the memory invariant: every sample under bound.
func (c *Checker) CheckMemory(bound int64) Invariant {
	_, peak := c.Peak()
	inv := Invariant{Name: "memory under bound", Want: fmt.Sprintf("< %s", MiB(bound)), Got: "peak " + MiB(peak)}
	if peak < 0 {
		inv.Got = "no memory sample"
		return inv
	}
	inv.Pass = peak < bound
	return inv
}

// MiB formats bytes as mebibytes.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// MemoryOverhead is the fixed part of the memory bound: the Go runtime,
// wsd's heap at idle, the HTTP servers and GC headroom.
const MemoryOverhead = 48 << 20

// PerConnOverhead is the memory of an idle session besides its send
// buffer: goroutine stacks, gws read buffer and parser state, the
// net/http handshake leftovers and registry entries.
const PerConnOverhead = 64 << 10

// MemoryBound is the most memory a wsd with this configuration may use
// with conns connections: each session holds at most max_bytes queued for
// sending (the echo path pauses at pause_bytes, which is ≤ max_bytes,
// plus one message in flight), plus a per-connection and a fixed
// overhead. The suite also sets it as the container's memory limit, so a
// leak past it is an OOM kill, not a slow drift.
func MemoryBound(conns int, b service.BackpressureConfig, maxMessageBytes int) int64 {
	perConn := max(b.MaxBytes, b.PauseBytes+int64(maxMessageBytes)) + PerConnOverhead
	return MemoryOverhead + int64(conns)*perConn
}
