// Command wsbench is the wsd load tool and benchmark suite.
//
//	wsbench suite [-smoke] [-out docs/bench]      run every measurement against wsd and the gws baseline
//	wsbench echo -url ws://host/ws/echo [-conns 1000 -inflight 8 | -rate 20000]
//	wsbench fanout -url ws://host/ws/topics/t -subs 10000 -rate 10 [-slow 1000]
//	wsbench idle -url ws://host/ws/echo -conns 10000 -hold 30s
//	wsbench cluster -subs 2000 -rate 20           two wsd replicas on an in-process NATS: local vs remote fan-out
//	wsbench report -dir docs/bench                  re-render results.md and the charts from results.json
//
// Each load mode prints its result as JSON. Connections are spread over
// several 127.0.0.x source addresses (-src) so that more than ~28k can
// reach one server port.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

const defaultSources = "127.0.0.2-127.0.0.9"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: wsbench suite|echo|fanout|idle|cluster|report [flags]  (wsbench <mode> -h for flags)")
		return 2
	}
	var err error
	switch args[0] {
	case "suite":
		err = suiteCmd(ctx, args[1:], stdout, stderr)
	case "echo":
		err = echoCmd(ctx, args[1:], stdout, stderr)
	case "fanout":
		err = fanoutCmd(ctx, args[1:], stdout, stderr)
	case "idle":
		err = idleCmd(ctx, args[1:], stdout, stderr)
	case "report":
		err = reportCmd(args[1:], stdout, stderr)
	case "cluster":
		err = clusterCmd(ctx, args[1:], stdout, stderr)
	default:
		err = fmt.Errorf("unknown mode %q: want suite, echo, fanout, idle, cluster or report", args[0])
	}
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "wsbench: %v\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "wsbench: %v\n", err)
		return 1
	}
}

type usageError struct{ error }

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("wsbench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func suiteCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("suite", stderr)
	smoke := fs.Bool("smoke", false, "tiny sizes, seconds long: proves the harness works end to end (CI)")
	out := fs.String("out", "", "results directory (default docs/bench; a temporary directory with -smoke)")
	src := fs.String("src", defaultSources, "client source addresses (range or list)")
	pin := fs.Bool("pin", true, "pin the client to CPU 0 and the servers to CPU 1 with taskset (needs 2+ CPUs)")
	wsdBin := fs.String("wsd-bin", "", "prebuilt wsd binary (default: go build ./cmd/wsd)")
	baseBin := fs.String("baseline-bin", "", "prebuilt baseline binary (default: go build ./bench/baseline)")
	repo := fs.String("repo", "", "build wsd and the baseline from this checkout (e.g. a `git worktree` of a commit); default: this module")
	profile := fs.Bool("profile", false, "also capture a wsd CPU profile under closed-loop load into <out>/raw")
	timeout := fs.Duration("timeout", 15*time.Minute, "abort the suite after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *pin && os.Getenv("WSBENCH_PINNED") == "" && numCPU() >= 2 {
		if err := reexecPinned("0"); err != nil {
			fmt.Fprintf(stderr, "wsbench: not pinned: %v\n", err)
		}
	}
	sc := suiteConfig{smoke: *smoke, out: *out, sources: *src, wsdBin: *wsdBin, baselineBin: *baseBin, repo: *repo, profile: *profile}
	if os.Getenv("WSBENCH_PINNED") != "" {
		sc.clientCPUs, sc.serverCPUs = "0", "1"
	}
	if sc.out == "" {
		if sc.smoke {
			dir, err := os.MkdirTemp("", "wsbench-smoke-")
			if err != nil {
				return err
			}
			sc.out = dir
		} else {
			root, err := moduleRoot()
			if err != nil {
				return err
			}
			sc.out = filepath.Join(root, "docs", "bench")
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	logf := func(f string, a ...any) {
		fmt.Fprintf(stderr, "%s wsbench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
	}
	res, err := runSuite(ctx, sc, logf)
	if err != nil {
		if res != nil {
			_ = printJSON(stderr, res) // what was measured before the failure
		}
		return err
	}
	if err := checkResults(res); err != nil {
		return err
	}
	if err := writeResults(sc.out, res); err != nil {
		return err
	}
	files, err := writeCharts(sc.out, res)
	if err != nil {
		return err
	}
	logf("wrote results.json, results.md and %s into %s", strings.Join(files, ", "), sc.out)
	_, err = io.WriteString(stdout, markdown(res))
	return err
}

// checkResults fails a run whose figures cannot be right, so a broken
// harness or server fails CI instead of publishing zeros.
func checkResults(r *Results) error {
	var errs []error
	for _, x := range r.Ratios {
		if math.IsNaN(x.Value) || math.IsInf(x.Value, 0) || x.Value <= 0 {
			errs = append(errs, fmt.Errorf("%s: ratio %v", x.Name, x.Value))
		}
	}
	for _, name := range []string{nameBaseline, nameWSD, nameNoTel} {
		for _, m := range []map[string]EchoResult{r.ClosedLoop, r.OpenLoop} {
			if e := m[name]; e.ServerCPUPerMsg <= 0 || e.Latency.Count == 0 {
				errs = append(errs, fmt.Errorf("%s %s echo: no CPU or latency measured", name, e.Mode))
			}
		}
	}
	// Telemetry on must really be on, or row 6 compares nothing.
	if r.MetricsScrapes == 0 {
		errs = append(errs, errors.New("telemetry-on wsd answered no GET /metrics"))
	}
	if r.OTLPRequests == 0 {
		errs = append(errs, errors.New("telemetry-on wsd exported no spans to the OTLP sink"))
	}
	for _, f := range r.Isolation {
		if f.DeliveryRatio < 0.9 {
			errs = append(errs, fmt.Errorf("isolation: fast subscribers received %.2f of the messages", f.DeliveryRatio))
		}
	}
	for name, f := range r.Fanout {
		if f.DeliveryRatio < 0.9 {
			errs = append(errs, fmt.Errorf("fan-out %s: subscribers received %.2f of the messages", name, f.DeliveryRatio))
		}
	}
	return errors.Join(errs...)
}

// numCPU counts the machine's processors. runtime.NumCPU is not used:
// it follows the affinity mask, which is one CPU once the tool pins itself.
func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 1
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "processor\t") {
			n++
		}
	}
	return max(n, 1)
}

// reexecPinned replaces this process with itself under taskset, so the
// Go runtime starts with the affinity (GOMAXPROCS follows it).
func reexecPinned(cpus string) error {
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	env := append(os.Environ(), "WSBENCH_PINNED=1")
	return syscall.Exec(taskset, append([]string{"taskset", "-c", cpus, self}, os.Args[1:]...), env)
}

// loadCmd is the shape of every load subcommand: the shared dial flags
// plus the subcommand's own (define), parsed from args; then run with
// the dial options and its result printed as JSON, even when run fails
// part way (the partial figures say where).
func loadCmd[R any](name string, args []string, stdout, stderr io.Writer, define func(*flag.FlagSet), run func(dialOptions) (R, error)) error {
	fs := newFlags(name, stderr)
	url := fs.String("url", "", "WebSocket URL (required)")
	src := fs.String("src", defaultSources, "client source addresses (range or list)")
	conc := fs.Int("dial-concurrency", 128, "parallel handshakes")
	define(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	dial, err := dialFrom(*url, *src, *conc)
	if err != nil {
		return err
	}
	r, err := run(dial)
	if perr := printJSON(stdout, r); perr != nil {
		return perr
	}
	return err
}

func dialFrom(url, src string, conc int) (dialOptions, error) {
	if url == "" {
		return dialOptions{}, usageError{errors.New("-url is required")}
	}
	srcs, err := parseSources(src)
	if err != nil {
		return dialOptions{}, usageError{err}
	}
	if _, err := raiseNoFile(200000); err != nil {
		return dialOptions{}, err
	}
	return dialOptions{url: url, sources: srcs, concurrency: conc}, nil
}

func echoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := echoConfig{}
	return loadCmd("echo", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&cfg.conns, "conns", 1000, "connections")
		fs.IntVar(&cfg.inflight, "inflight", 8, "closed loop: messages outstanding per connection")
		fs.Float64Var(&cfg.rate, "rate", 0, "open loop: messages per second over all connections (0: closed loop)")
		fs.IntVar(&cfg.size, "size", 1024, "payload bytes")
		fs.DurationVar(&cfg.warmup, "warmup", 3*time.Second, "warm-up, not measured")
		fs.DurationVar(&cfg.window, "duration", 10*time.Second, "measured window")
		fs.IntVar(&cfg.pid, "pid", 0, "server pid to sample CPU and RSS from /proc (0: none)")
	}, func(d dialOptions) (EchoResult, error) {
		cfg.dial = d
		return runEcho(ctx, cfg)
	})
}

func fanoutCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := fanoutConfig{}
	return loadCmd("fanout", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&cfg.subs, "subs", 1000, "subscribers, slow ones included")
		fs.IntVar(&cfg.slow, "slow", 0, "subscribers that stop reading")
		fs.Float64Var(&cfg.rate, "rate", 10, "published messages per second")
		fs.IntVar(&cfg.size, "size", 1024, "payload bytes")
		fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "warm-up, not measured")
		fs.DurationVar(&cfg.window, "duration", 10*time.Second, "measured window")
		fs.DurationVar(&cfg.every, "sample", 500*time.Millisecond, "server RSS sampling period")
		fs.IntVar(&cfg.pid, "pid", 0, "server pid to sample CPU and RSS from /proc (0: none)")
	}, func(d dialOptions) (FanoutResult, error) {
		cfg.dial = d
		return runFanout(ctx, cfg)
	})
}

// idleResult is what `wsbench idle` prints.
type idleResult struct {
	Conns       int     `json:"conns"`
	DialSeconds float64 `json:"dial_seconds"`
	Closed      int64   `json:"closed_by_server"`
}

func idleCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var n int
	var hold time.Duration
	return loadCmd("idle", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&n, "conns", 10000, "connections to hold")
		fs.DurationVar(&hold, "hold", 30*time.Second, "how long to hold them")
	}, func(d dialOptions) (idleResult, error) {
		var lost atomic.Int64
		began := time.Now()
		conns, err := dialAll(ctx, d, n, func(int) gws.Event { return baseEvent{closed: &lost} })
		if err != nil {
			return idleResult{}, err
		}
		defer closeAll(conns)
		dialed := time.Since(began)
		fmt.Fprintf(stderr, "wsbench: %d connections open in %s; holding for %s\n", n, dialed.Round(time.Millisecond), hold)
		err = sleepCtx(ctx, hold)
		if errors.Is(err, context.Canceled) {
			err = nil // interrupted: report what was held
		}
		r := idleResult{n, dialed.Seconds(), lost.Load()}
		if err == nil && r.Closed > 0 {
			err = fmt.Errorf("the server closed %d of %d idle connections", r.Closed, n)
		}
		return r, err
	})
}

func reportCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("report", stderr)
	dir := fs.String("dir", "docs/bench", "directory holding results.json; results.md and the charts are rewritten there")
	if err := parse(fs, args); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(*dir, "results.json"))
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s/results.json: %w", *dir, err)
	}
	res.Ratios = ratios(&res)
	if err := writeResults(*dir, &res); err != nil {
		return err
	}
	if _, err := writeCharts(*dir, &res); err != nil {
		return err
	}
	_, err = io.WriteString(stdout, markdown(&res))
	return err
}
