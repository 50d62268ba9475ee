package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// suiteConfig selects what the suite runs and where it writes.
type suiteConfig struct {
	smoke       bool
	out         string // results directory (docs/bench)
	sources     string // client source addresses
	wsdBin      string // prebuilt binaries; empty: go build
	baselineBin string
	repo        string // source tree to build them from; empty: this module
	clientCPUs  string // taskset lists; empty: no pinning
	serverCPUs  string
	profile     bool // capture a wsd CPU profile under closed-loop load
}

// params are the sizes of one suite run (full or smoke).
type params struct {
	Rounds           int // echo rounds per server, alternating servers
	Closed           echoConfig
	OpenConns        int
	OpenRateFraction float64 // open-loop rate: this fraction of the lower closed-loop throughput
	OpenWarmup       time.Duration
	OpenWindow       time.Duration
	IdleSteps        []int
	IdleHold         time.Duration // each idle step is held this long before RSS is read
	Fanout           fanoutConfig
	Isolation        fanoutConfig
	ScrapeEvery      time.Duration
}

// Params is the JSON record of the sizes used.
type Params struct {
	Rounds                                   int
	ClosedConns, ClosedInFlight, PayloadSize int
	ClosedWarmupS, ClosedWindowS             float64
	OpenConns                                int
	OpenRateFraction                         float64
	OpenWindowS                              float64
	IdleSteps                                []int
	IdleHoldS                                float64
	FanoutSubs                               int
	FanoutRate                               float64
	FanoutPayload                            int
	FanoutWindowS                            float64
	IsolationSubs, IsolationSlow             int
	IsolationRate                            float64
	IsolationPayload                         int
	IsolationWindowS                         float64
	MetricsScrapeEveryS                      float64
}

// suiteParams sizes a run. Every load keeps each connection below wsd's
// default limits.message_rate (1000 msgs/s per connection, shaped, left
// on): closed loop ~100/s per connection, open loop ~400/s, publisher
// 2 and 50/s. A closed loop over few connections would hit the shaping
// and measure the protection, not the cost. The fan-out rates keep both
// servers well below one core on this 2-core VM (20k and 25k writes/s):
// at 4 and 100/s, on a day the VM ran 2.5x slower, both servers were
// saturated and the latencies measured their queues, not their cost.
func suiteParams(smoke bool, maxIdle int) params {
	if smoke {
		return params{
			Rounds:           1,
			Closed:           echoConfig{conns: 100, inflight: 1, size: 1024, warmup: 300 * time.Millisecond, window: 700 * time.Millisecond},
			OpenConns:        10,
			OpenRateFraction: 0.2,
			OpenWarmup:       300 * time.Millisecond,
			OpenWindow:       700 * time.Millisecond,
			IdleSteps:        []int{50, 100},
			Fanout:           fanoutConfig{subs: 50, rate: 20, size: 256, warmup: 300 * time.Millisecond, window: 700 * time.Millisecond, every: 100 * time.Millisecond},
			Isolation:        fanoutConfig{subs: 40, slow: 4, rate: 50, size: 1024, warmup: 300 * time.Millisecond, window: 700 * time.Millisecond, every: 100 * time.Millisecond},
			ScrapeEvery:      500 * time.Millisecond,
		}
	}
	steps := []int{1000, 5000, 10000}
	for _, n := range []int{17000, 50000, 100000} {
		if n <= maxIdle {
			steps = append(steps, n)
		}
	}
	return params{
		Rounds:           7,
		Closed:           echoConfig{conns: 1000, inflight: 8, size: 1024, warmup: 1500 * time.Millisecond, window: 5 * time.Second},
		OpenConns:        100,
		OpenRateFraction: 0.5,
		OpenWarmup:       1500 * time.Millisecond,
		OpenWindow:       5 * time.Second,
		IdleSteps:        steps,
		// One default heartbeat.ping_interval and a margin: wsd pings each
		// connection for the first time 12.5-25s after it opened, and
		// answering pings (the write, the pong read) is part of what an
		// idle wsd connection costs. Reading RSS before that would
		// measure connections that have not yet paid it.
		IdleHold:    service.DefaultPingInterval + 2*time.Second,
		Fanout:      fanoutConfig{subs: 10000, rate: 2, size: 1024, warmup: 2 * time.Second, window: 10 * time.Second, every: 500 * time.Millisecond},
		Isolation:   fanoutConfig{subs: 500, slow: 50, rate: 50, size: 8192, warmup: 2 * time.Second, window: 15 * time.Second, every: 500 * time.Millisecond},
		ScrapeEvery: 5 * time.Second,
	}
}

// Results is the JSON document the suite writes (docs/bench/results.json).
type Results struct {
	Date     string  `json:"date"`
	Commit   string  `json:"commit"`
	Machine  Machine `json:"machine"`
	Smoke    bool    `json:"smoke"`
	Pinning  string  `json:"pinning"`
	NoFile   uint64  `json:"rlimit_nofile"`
	Duration float64 `json:"duration_seconds"`
	Params   Params  `json:"params"`
	// WSDArgs is how wsd was configured: every protection on, the
	// admission caps sized for the load.
	WSDArgs []string `json:"wsd_args"`
	// TelemetryEnv is the environment of the telemetry-on "wsd" server
	// (metrics: Prometheus on the admin /metrics, the default; traces:
	// OTLP/HTTP to a loopback sink); NoTelemetryEnv that of "wsd-notel".
	TelemetryEnv   []string `json:"telemetry_env"`
	NoTelemetryEnv []string `json:"no_telemetry_env"`
	MetricsScrapes int      `json:"metrics_scrapes"` // successful /metrics scrapes of telemetry-on wsd
	OTLPRequests   int64    `json:"otlp_trace_exports"`
	OTLPBytes      int64    `json:"otlp_trace_export_bytes"`

	// ClosedLoop and OpenLoop hold the median round (by throughput,
	// by CPU per message); the Rounds maps hold every round.
	ClosedLoop       map[string]EchoResult   `json:"closed_loop"`
	OpenLoop         map[string]EchoResult   `json:"open_loop"`
	ClosedLoopRounds map[string][]EchoResult `json:"closed_loop_rounds"`
	OpenLoopRounds   map[string][]EchoResult `json:"open_loop_rounds"`
	// SameTimeRounds: open-loop echo driven against the three servers at
	// once, each at a third of the open-loop rate, so that every server
	// of a round runs on the same machine state (see runSuite).
	SameTimeRounds map[string][]EchoResult `json:"same_time_rounds"`
	Idle           map[string]IdleResult   `json:"idle"`
	Fanout         map[string]FanoutResult `json:"fanout"`
	// Isolation is keyed "baseline", "baseline+slow", "wsd", "wsd+slow".
	Isolation  map[string]FanoutResult `json:"isolation"`
	WSDEvicted int64                   `json:"wsd_slow_consumers_evicted"`
	// WSDWriteTimeouts counts the isolation runs' slow subscribers that
	// wsd's write watchdog closed (write_timeout) before they reached
	// max_bytes.
	WSDWriteTimeouts int64    `json:"wsd_write_timeouts"`
	Ratios           []Ratio  `json:"ratios"`
	Notes            []string `json:"notes"`
}

// Ratio is one headline figure: wsd over the baseline (or telemetry on
// over off), with its target when the issue sets one.
type Ratio struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Target   string  `json:"target,omitempty"` // e.g. ">= 0.90"
	Met      *bool   `json:"met,omitempty"`
	Baseline string  `json:"baseline"` // absolute values, human readable
	Subject  string  `json:"subject"`
}

// Machine describes where the suite ran.
type Machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	MemoryGiB int    `json:"memory_gib"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	LoadAvg   string `json:"loadavg_at_start"`
}

const (
	nameBaseline = "baseline"
	nameWSD      = "wsd"
	nameNoTel    = "wsd-notel"
)

// noTelemetryEnv turns wsd's OpenTelemetry exporters off (autoexport's
// "none"), the no-op provider of measurement 6.
var noTelemetryEnv = []string{"OTEL_METRICS_EXPORTER=none", "OTEL_TRACES_EXPORTER=none", "OTEL_LOGS_EXPORTER=none"}

// wsdArgs keeps every protection on and sizes the admission caps for a
// benchmark that opens tens of thousands of connections from a few
// loopback addresses in seconds: without this, the per-IP cap (429) and
// the upgrade rate (429) would refuse the load, as they should in
// production. pprof is on: the closed-loop run takes a CPU profile.
func wsdArgs() []string {
	return []string{
		"--listen={listen}", "--admin_listen={admin}", "--admin.pprof=true",
		"--limits.max_connections=200000",
		"--limits.max_connections_per_ip=200000",
		"--limits.upgrade_rate=100000", "--limits.upgrade_burst=100000",
		"--limits.max_handshakes=4096",
	}
}

func runSuite(ctx context.Context, sc suiteConfig, logf func(string, ...any)) (*Results, error) {
	began := time.Now()
	nofile, err := raiseNoFile(200000)
	notes := []string{}
	if err != nil {
		notes = append(notes, fmt.Sprintf("could not raise RLIMIT_NOFILE: %v", err))
	}
	if nofile < 200000 {
		notes = append(notes, fmt.Sprintf("RLIMIT_NOFILE is %d (hard limit; raising it needs CAP_SYS_RESOURCE), so one server process holds at most ~%d connections: idle steps above that are not run", nofile, maxIdleFor(nofile)))
	}
	srcs, err := parseSources(sc.sources)
	if err != nil {
		return nil, err
	}
	p := suiteParams(sc.smoke, maxIdleFor(nofile))
	raw := filepath.Join(sc.out, "raw")
	if err := os.MkdirAll(raw, 0o755); err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	commit := "prebuilt binaries"
	if sc.wsdBin == "" || sc.baselineBin == "" {
		root := sc.repo
		if root == "" {
			if root, err = moduleRoot(); err != nil {
				return nil, err
			}
		}
		logf("building wsd and baseline from %s", root)
		if sc.wsdBin, sc.baselineBin, err = buildBinaries(ctx, root, raw); err != nil {
			return nil, err
		}
		commit = gitCommit(root)
	}
	sink, err := startOTLPSink()
	if err != nil {
		return nil, err
	}
	defer sink.close()
	specs := map[string]serverSpec{
		nameBaseline: {name: nameBaseline, bin: sc.baselineBin, args: []string{"--listen={listen}"}},
		nameWSD:      {name: nameWSD, bin: sc.wsdBin, args: wsdArgs(), env: sink.env(), admin: true},
		nameNoTel:    {name: nameNoTel, bin: sc.wsdBin, args: wsdArgs(), env: noTelemetryEnv, admin: true},
	}
	res := &Results{
		Date: began.UTC().Format(time.RFC3339), Commit: commit, Machine: machine(), Smoke: sc.smoke,
		NoFile: nofile, WSDArgs: wsdArgs(), NoTelemetryEnv: noTelemetryEnv,
		ClosedLoop: map[string]EchoResult{}, OpenLoop: map[string]EchoResult{}, Idle: map[string]IdleResult{},
		ClosedLoopRounds: map[string][]EchoResult{}, OpenLoopRounds: map[string][]EchoResult{}, SameTimeRounds: map[string][]EchoResult{},
		Fanout: map[string]FanoutResult{}, Isolation: map[string]FanoutResult{}, Notes: notes,
		Pinning: "none (fewer than 2 CPUs or no taskset)",
	}
	if sc.serverCPUs != "" {
		res.Pinning = fmt.Sprintf("client on CPU %s, servers on CPU %s (taskset; GOMAXPROCS follows the affinity)", sc.clientCPUs, sc.serverCPUs)
	}
	dial := dialOptions{sources: srcs, concurrency: 64}

	// with starts fresh server processes, runs fn against them and stops
	// them. A telemetry-on wsd is scraped as Prometheus would.
	with := func(names []string, phase string, fn func(map[string]*runningServer) error) error {
		logf("%s: starting %s", phase, strings.Join(names, ", "))
		rs := map[string]*runningServer{}
		defer func() {
			for _, r := range rs {
				r.stop()
			}
		}()
		scrapeCtx, stopScrape := context.WithCancel(ctx)
		defer stopScrape()
		scrapes := make(chan int, len(names))
		for _, name := range names {
			r, err := startServer(ctx, specs[name], sc.serverCPUs, filepath.Join(raw, name+"-"+phase+".log"))
			if err != nil {
				return err
			}
			rs[name] = r
			if name == nameWSD {
				go func() { scrapes <- r.scrape(scrapeCtx, p.ScrapeEvery) }()
			} else {
				scrapes <- 0
			}
		}
		err := fn(rs)
		stopScrape()
		for range names {
			res.MetricsScrapes += <-scrapes
		}
		for _, r := range rs {
			err = errors.Join(err, r.alive())
		}
		if err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
		return nil
	}

	// Phase 1: idle memory, one fresh server at a time.
	for _, name := range []string{nameBaseline, nameWSD} {
		err := with([]string{name}, "idle", func(rs map[string]*runningServer) error {
			o := dial
			o.url = rs[name].url("/ws/echo")
			o.concurrency = 256
			var memstats func() (int64, int64, error)
			if rs[name].spec.admin {
				memstats = func() (int64, int64, error) { return rs[name].memStats(ctx) }
			}
			idle, err := runIdle(ctx, o, rs[name].pid, p.IdleSteps, p.IdleHold, memstats)
			res.Idle[name] = idle
			return err
		})
		if err != nil {
			return res, err
		}
	}

	// Phase 2: echo and fan-out. The three servers run side by side (an
	// undriven server costs nothing) and the rounds alternate between
	// them, so drift in the machine's load hits all of them alike; each
	// figure is the median round.
	echoNames := []string{nameBaseline, nameWSD, nameNoTel}
	err = with(echoNames, "echo", func(rs map[string]*runningServer) error {
		runs := map[string][]EchoResult{}
		for round := range p.Rounds {
			for i := range echoNames {
				name := echoNames[(i+round)%len(echoNames)]
				logf("closed-loop echo, round %d: %s", round+1, name)
				cfg := p.Closed
				cfg.dial, cfg.pid = dial, rs[name].pid
				cfg.dial.url = rs[name].url("/ws/echo")
				r, err := runEcho(ctx, cfg)
				if err != nil {
					return fmt.Errorf("%s closed loop: %w", name, err)
				}
				runs[name] = append(runs[name], r)
			}
		}
		for name, rr := range runs {
			res.ClosedLoop[name] = median(rr, func(e EchoResult) float64 { return e.Throughput })
			res.ClosedLoopRounds[name] = rr
		}
		// A rate both sustain: a fraction of the lower closed-loop throughput.
		rate := math.Floor(p.OpenRateFraction * min(res.ClosedLoop[nameBaseline].Throughput, res.ClosedLoop[nameWSD].Throughput))
		if rate < 1 {
			return errors.New("closed-loop throughput too low to choose an open-loop rate")
		}
		runs = map[string][]EchoResult{}
		for round := range p.Rounds {
			for i := range echoNames {
				name := echoNames[(i+round)%len(echoNames)]
				logf("open-loop echo at %.0f msgs/s, round %d: %s", rate, round+1, name)
				cfg := echoConfig{dial: dial, conns: p.OpenConns, size: p.Closed.size, rate: rate,
					warmup: p.OpenWarmup, window: p.OpenWindow, pid: rs[name].pid}
				cfg.dial.url = rs[name].url("/ws/echo")
				r, err := runEcho(ctx, cfg)
				if err != nil {
					return fmt.Errorf("%s open loop: %w", name, err)
				}
				if r.Throughput < 0.95*rate {
					return fmt.Errorf("open loop: %s sustained %.0f of %.0f msgs/s offered", name, r.Throughput, rate)
				}
				runs[name] = append(runs[name], r)
			}
		}
		for name, rr := range runs {
			res.OpenLoop[name] = median(rr, func(e EchoResult) float64 { return e.ServerCPUPerMsg })
			res.OpenLoopRounds[name] = rr
		}
		// The same load split over the three servers at once. On a
		// shared VM the speed of a core drifts by tens of percent from
		// one run of seconds to the next (the per-round ratios above
		// range over ±15 %); servers measured at the same time see the
		// same drift, and each process's CPU time per message does not
		// depend on waiting for the other.
		for round := range p.Rounds {
			logf("open-loop echo at %.0f msgs/s split over the three servers at once, round %d", rate, round+1)
			type result struct {
				name string
				r    EchoResult
				err  error
			}
			results := make(chan result, len(echoNames))
			for _, name := range echoNames {
				cfg := echoConfig{dial: dial, conns: p.OpenConns, size: p.Closed.size, rate: math.Floor(rate / float64(len(echoNames))),
					warmup: p.OpenWarmup, window: p.OpenWindow, pid: rs[name].pid}
				cfg.dial.url = rs[name].url("/ws/echo")
				go func() {
					r, err := runEcho(ctx, cfg)
					results <- result{name, r, err}
				}()
			}
			for range echoNames {
				got := <-results
				if got.err != nil {
					return fmt.Errorf("%s open loop, servers at once: %w", got.name, got.err)
				}
				if got.r.Throughput < 0.95*got.r.OfferedRate {
					return fmt.Errorf("open loop, servers at once: %s sustained %.0f of %.0f msgs/s offered", got.name, got.r.Throughput, got.r.OfferedRate)
				}
				res.SameTimeRounds[got.name] = append(res.SameTimeRounds[got.name], got.r)
			}
		}
		for _, name := range []string{nameBaseline, nameWSD} {
			logf("fan-out: %s", name)
			cfg := p.Fanout
			cfg.dial, cfg.pid = dial, rs[name].pid
			cfg.dial.url = rs[name].url("/ws/topics/bench-fanout")
			fr, err := runFanout(ctx, cfg)
			res.Fanout[name] = fr
			if err != nil {
				return fmt.Errorf("%s fan-out: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return res, err
	}

	// Phase 3: isolation, on fresh servers so that RSS growth is not
	// blurred by the garbage of earlier runs.
	for _, name := range []string{nameBaseline, nameWSD} {
		err := with([]string{name}, "isolation", func(all map[string]*runningServer) error {
			rs := all[name]
			for _, run := range []struct {
				key string
				cfg fanoutConfig
			}{{name, withoutSlow(p.Isolation)}, {name + "+slow", p.Isolation}} {
				cfg := run.cfg
				cfg.dial, cfg.pid = dial, rs.pid
				cfg.dial.url = rs.url("/ws/topics/bench-" + strings.ReplaceAll(run.key, "+", "-"))
				fr, err := runFanout(ctx, cfg)
				res.Isolation[run.key] = fr
				if err != nil {
					return err
				}
			}
			if !rs.spec.admin {
				return nil
			}
			var st struct {
				Evicted       int64 `json:"evicted_total"`
				WriteTimeouts int64 `json:"write_timeouts_total"`
			}
			b, err := rs.adminGet(ctx, "/debug/stats")
			if err == nil {
				err = json.Unmarshal(b, &st)
			}
			if err != nil {
				return fmt.Errorf("wsd stats: %w", err)
			}
			res.WSDEvicted, res.WSDWriteTimeouts = st.Evicted, st.WriteTimeouts
			return nil
		})
		if err != nil {
			return res, err
		}
	}

	if sc.profile {
		err := with([]string{nameWSD}, "profile", func(rs map[string]*runningServer) error {
			return profileClosedLoop(ctx, rs[nameWSD], p.Closed, dial, filepath.Join(raw, "wsd-closed-loop.pprof"))
		})
		if err != nil {
			return res, err
		}
	}
	res.TelemetryEnv = sink.env()
	res.OTLPRequests, res.OTLPBytes = sink.requests.Load(), sink.bytes.Load()
	res.Params = p.record()
	res.Ratios = ratios(res)
	res.Duration = time.Since(began).Seconds()
	return res, nil
}

// median returns the element with the median key (the lower middle for
// an even count).
func median[T any](xs []T, key func(T) float64) T {
	s := slices.Clone(xs)
	slices.SortFunc(s, func(a, b T) int { return cmp.Compare(key(a), key(b)) })
	return s[(len(s)-1)/2]
}

func withoutSlow(c fanoutConfig) fanoutConfig { c.slow = 0; return c }

// maxIdleFor is the most idle connections one server holds under the
// descriptor limit: wsd refuses upgrades above 90% of it (fd_headroom).
func maxIdleFor(nofile uint64) int { return int(float64(nofile)*0.9) - 500 }

// profileClosedLoop captures a CPU profile of wsd during a closed-loop
// run (it is a separate run: profiling costs CPU).
func profileClosedLoop(ctx context.Context, rs *runningServer, base echoConfig, dial dialOptions, path string) error {
	cfg := base
	cfg.dial = dial
	cfg.dial.url = rs.url("/ws/echo")
	secs := int(cfg.window.Seconds())
	prof := make(chan error, 1)
	go func() {
		if err := sleepCtx(ctx, cfg.warmup); err != nil {
			prof <- err
			return
		}
		b, err := rs.adminGet(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(secs, 1)))
		if err == nil {
			err = os.WriteFile(path, b, 0o644)
		}
		prof <- err
	}()
	_, err := runEcho(ctx, cfg)
	return errors.Join(err, <-prof)
}

func (p params) record() Params {
	return Params{
		Rounds: p.Rounds, ClosedConns: p.Closed.conns, ClosedInFlight: p.Closed.inflight, PayloadSize: p.Closed.size,
		ClosedWarmupS: p.Closed.warmup.Seconds(), ClosedWindowS: p.Closed.window.Seconds(),
		OpenConns: p.OpenConns, OpenRateFraction: p.OpenRateFraction, OpenWindowS: p.OpenWindow.Seconds(),
		IdleSteps: p.IdleSteps, IdleHoldS: p.IdleHold.Seconds(),
		FanoutSubs: p.Fanout.subs, FanoutRate: p.Fanout.rate, FanoutPayload: p.Fanout.size, FanoutWindowS: p.Fanout.window.Seconds(),
		IsolationSubs: p.Isolation.subs, IsolationSlow: p.Isolation.slow, IsolationRate: p.Isolation.rate,
		IsolationPayload: p.Isolation.size, IsolationWindowS: p.Isolation.window.Seconds(),
		MetricsScrapeEveryS: p.ScrapeEvery.Seconds(),
	}
}

// gitCommit names the commit the binaries were built from, flagging a
// tree with uncommitted changes.
func gitCommit(dir string) string {
	cmd := exec.Command("git", "rev-parse", "--short=12", "HEAD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	st := exec.Command("git", "status", "--porcelain", "--untracked-files=no")
	st.Dir = dir
	if b, err := st.Output(); err == nil && len(b) > 0 {
		c += " (+ uncommitted changes)"
	}
	return c
}

func machine() Machine {
	m := Machine{Cores: numCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryGiB = int(math.Round(float64(kb) / (1 << 20)))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return m
}
