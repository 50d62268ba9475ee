//go:build e2e

// Package e2e is the chaos suite: each test starts wsd (and, where a
// network fault is needed, Toxiproxy) in containers built from this
// repository, injects one family of faults with the chaos package,
// asserts the scenario's own outcomes and the shared invariants (every
// counter back to its baseline after a quiet period, memory under the
// bound derived from the configuration and enforced as a container
// limit, no OOM kill), and records everything in the run report.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/wsd-dev/wsd/chaos"
	"github.com/wsd-dev/wsd/chaos/images"
	"github.com/wsd-dev/wsd/chaos/report"
	"github.com/wsd-dev/wsd/chaos/toxiproxy"
	"github.com/wsd-dev/wsd/chaos/wsdcontainer"
	"github.com/wsd-dev/wsd/service"
)

// dockerErr is why the engine is unusable (nil: usable).
var dockerErr error

// results collects every scenario's record for the report.
var (
	resultsMu sync.Mutex
	results   []*chaos.Result
)

func TestMain(m *testing.M) {
	images.ConfigureTestcontainers()
	dockerErr = pingDocker()
	if dockerErr != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "FATAL: the e2e suite needs a Docker engine and CI=true: %v\n", dockerErr)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "e2e: skipping every scenario, no Docker engine: %v (set CI=true to make this a failure)\n", dockerErr)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if n, err := images.RemoveOrphans(ctx); err != nil || n > 0 {
			fmt.Fprintf(os.Stderr, "e2e: removed %d containers/networks left by a crashed run (%v)\n", n, err)
		}
		cancel()
	}
	code := m.Run()
	if len(results) > 0 {
		dir := reportDir()
		if err := report.Write(dir, results); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: write report: %v\n", err)
			code = max(code, 1)
		} else {
			fmt.Fprintf(os.Stderr, "e2e: report written to %s\n", filepath.Join(dir, "report.md"))
		}
	}
	os.Exit(code)
}

func pingDocker() error {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("ping the engine: %w", err)
	}
	return nil
}

// reportDir is $WSD_E2E_REPORT_DIR, default e2e/report (this directory's
// report/ subdirectory: tests run with the package directory as cwd).
func reportDir() string {
	if d := os.Getenv("WSD_E2E_REPORT_DIR"); d != "" {
		return d
	}
	return "report"
}

func requireDocker(t *testing.T) {
	t.Helper()
	if dockerErr == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no Docker engine (CI=true makes this a failure): %v", dockerErr)
	}
	t.Skipf("no Docker engine: %v", dockerErr)
}

// stackOpts configures one scenario's containers.
type stackOpts struct {
	// config is wsd configuration (dotted keys) on top of suiteConfig.
	config map[string]string
	// nofile, when > 0, is the container's RLIMIT_NOFILE.
	nofile int64
	// conns is the most connections the scenario holds at once; with
	// the backpressure settings it gives the memory bound.
	conns int
	// toxiproxy puts a Toxiproxy (proxy "wsd" → wsd:8080) in front.
	toxiproxy bool
	// memLimit, when > 0, replaces the memory bound computed from conns.
	memLimit int64
	// warmToken, when set, is the access_token of the warm-up echo
	// connection (a stack with auth.mode jwt refuses it otherwise).
	warmToken string
}

// suiteConfig is what every scenario shrinks: one client address (the
// Docker gateway) opens every connection, so the per-IP cap and the
// upgrade rate are raised; the send-buffer thresholds are small so that
// backpressure engages with little traffic and the memory bound
// (MemoryBound) is tight. Scenarios override what they test.
var suiteConfig = map[string]string{
	"backpressure.warn_bytes":       "32768",
	"backpressure.pause_bytes":      "65536",
	"backpressure.resume_bytes":     "32768",
	"backpressure.max_bytes":        "131072",
	"limits.max_connections_per_ip": "100000",
	"limits.upgrade_rate":           "100000",
	"limits.upgrade_burst":          "100000",
	"log.level":                     "warn",
}

// stack is one scenario's running system.
type stack struct {
	t       *testing.T
	ctx     context.Context
	wsd     *wsdcontainer.Container
	tox     *toxiproxy.Container
	target  chaos.Target
	proxied chaos.Target // through Toxiproxy (zero without it)
	checker *chaos.Checker
	res     *chaos.Result
	cfg     service.Config
	bound   int64
	// clientAddrs are the addresses wsd sees clients connect from (the
	// network gateway): they must never appear in /metrics.
	clientAddrs []string
	// started is the container state at the baseline: the process a
	// scenario must end with.
	started wsdcontainer.ExitState
}

var imgOnce struct {
	sync.Once
	wsd, tox string
	err      error
}

func buildImages(ctx context.Context) (string, string, error) {
	imgOnce.Do(func() {
		imgOnce.wsd, imgOnce.err = images.Wsd(ctx)
		if imgOnce.err == nil {
			imgOnce.tox, imgOnce.err = images.Toxiproxy(ctx)
		}
	})
	return imgOnce.wsd, imgOnce.tox, imgOnce.err
}

// startStack starts the containers on a fresh network, takes the
// baseline and starts sampling. Everything is removed at test end, pass
// or fail.
func startStack(t *testing.T, name, description string, o stackOpts) *stack {
	t.Helper()
	requireDocker(t)
	ctx := t.Context()
	wsdImg, toxImg, err := buildImages(ctx)
	if err != nil {
		t.Fatalf("build images: %v", err)
	}
	nw, err := network.New(ctx, network.WithLabels(images.SessionLabels()))
	testcontainers.CleanupNetwork(t, nw)
	if err != nil {
		t.Fatalf("create network: %v", err)
	}

	cfg := service.DefaultConfig()
	env := map[string]string{}
	for k, v := range suiteConfig {
		env[k] = v
	}
	for k, v := range o.config {
		env[k] = v
	}
	applyConfig(t, &cfg, env)
	conns := max(o.conns, 1)
	bound := chaos.MemoryBound(conns, cfg.Backpressure, cfg.Limits.MaxMessageBytes)
	if o.memLimit > 0 {
		bound = o.memLimit
	}

	opts := []testcontainers.ContainerCustomizer{
		network.WithNetwork([]string{"wsd"}, nw),
		wsdcontainer.WithMemoryLimit(bound),
		// The Go runtime collects harder near 80% of the limit, as a
		// production deployment would configure it; a real leak still
		// ends in an OOM kill.
		testcontainers.WithEnv(map[string]string{"GOMEMLIMIT": strconv.FormatInt(bound*8/10, 10)}),
	}
	for k, v := range env {
		opts = append(opts, wsdcontainer.WithConfig(k, v))
	}
	if o.nofile > 0 {
		opts = append(opts, wsdcontainer.WithNofile(o.nofile))
	}
	wsd, err := wsdcontainer.Run(ctx, wsdImg, opts...)
	testcontainers.CleanupContainer(t, wsd)
	if err != nil {
		t.Fatalf("start wsd: %v", err)
	}
	t.Cleanup(func() { _ = wsd.Close() })

	s := &stack{t: t, ctx: ctx, wsd: wsd, cfg: cfg, bound: bound, res: chaos.NewResult(name, description)}
	s.res.MemoryBound = bound
	if insp, err := wsd.Inspect(ctx); err == nil {
		for _, ep := range insp.NetworkSettings.Networks {
			if ep.Gateway.IsValid() {
				s.clientAddrs = append(s.clientAddrs, ep.Gateway.String())
			}
		}
	}
	admin := chaos.NewAdmin(wsd.AdminURL())
	t.Cleanup(admin.Close)
	s.target = chaos.Target{WS: wsd.WSURL(), Admin: admin}
	if o.toxiproxy {
		tox, err := toxiproxy.Run(ctx, toxImg, network.WithNetwork([]string{"toxiproxy"}, nw),
			toxiproxy.WithProxy("wsd", "wsd:8080"))
		testcontainers.CleanupContainer(t, tox)
		if err != nil {
			t.Fatalf("start toxiproxy: %v", err)
		}
		addr, err := tox.ProxyAddr(ctx, "wsd")
		if err != nil {
			t.Fatal(err)
		}
		s.tox = tox
		s.proxied = chaos.Target{WS: "ws://" + addr, Admin: admin}
	}
	s.res.Note("wsd config: %s; memory limit %s; nofile %s", configLine(o.config), chaos.MiB(bound), nofileText(o.nofile))

	s.checker = chaos.NewChecker(admin, wsd.MemoryUsage, chaos.DefaultTolerance)
	// Warm up: one echo round trip so that lazily started runtime and
	// server machinery is in the baseline, not counted as a leak.
	warmURL := s.target.EchoURL()
	if o.warmToken != "" {
		warmURL += "?access_token=" + o.warmToken
	}
	warm, err := chaos.Dial(ctx, warmURL)
	if err != nil {
		t.Fatalf("warm-up connection: %v\n%s", err, wsd.LogText(ctx))
	}
	_ = warm.WriteMessage(chaos.OpText, []byte("warm"))
	_, _, _ = warm.ReadMessage()
	_ = warm.CloseGracefully(2 * time.Second)
	if _, err := s.checker.Baseline(ctx, 10*time.Second); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	if s.started, err = wsd.ExitState(ctx); err != nil {
		t.Fatalf("inspect wsd: %v", err)
	}
	s.checker.Start(ctx, 250*time.Millisecond)
	t.Cleanup(func() { s.record() })
	return s
}

func configLine(m map[string]string) string {
	if len(m) == 0 {
		return "defaults"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func nofileText(n int64) string {
	if n == 0 {
		return "engine default"
	}
	return strconv.FormatInt(n, 10)
}

// check records an invariant and fails the test when it does not hold.
func (s *stack) check(name string, pass bool, want, got string, args ...any) bool {
	s.t.Helper()
	if !s.res.Check(name, pass, want, got, args...) {
		s.t.Errorf("%s: want %s, got %s", name, want, fmt.Sprintf(got, args...))
		return false
	}
	return true
}

// fatal records err as the scenario's failure and stops the test.
func (s *stack) fatal(format string, args ...any) {
	s.t.Helper()
	err := fmt.Errorf(format, args...)
	s.res.Fail(err)
	s.t.Fatalf("%v\nwsd logs (tail):\n%s", err, tail(s.wsd.LogText(context.Background()), 40))
}

// finish asserts the shared invariants: counters back to the baseline
// within quiet, memory under the bound, no OOM kill, the admin listener
// alive, no client-controlled value in /metrics.
func (s *stack) finish(quiet time.Duration, clientValues ...string) {
	s.t.Helper()
	ctx := s.ctx
	for _, inv := range s.checker.CheckBaseline(ctx, quiet) {
		s.check(inv.Name, inv.Pass, inv.Want, "%s", inv.Got)
	}
	s.checker.Stop()
	inv := s.checker.CheckMemory(s.bound)
	s.check(inv.Name, inv.Pass, inv.Want, "%s", inv.Got)
	st, err := s.wsd.ExitState(ctx)
	if err != nil {
		s.check("wsd container inspectable", false, "inspect ok", "%v", err)
	} else {
		s.check("not OOM-killed", !st.OOMKilled, "OOMKilled=false", "OOMKilled=%v", st.OOMKilled)
		s.check("wsd still running", st.Running, "running", "running=%v exit=%d", st.Running, st.ExitCode)
		b := s.started
		s.check("the same wsd process (no crash, no restart)",
			st.Pid == b.Pid && st.RestartCount == b.RestartCount && st.StartedAt.Equal(b.StartedAt),
			fmt.Sprintf("pid %d, restarts %d, started %s", b.Pid, b.RestartCount, b.StartedAt.Format(time.RFC3339Nano)),
			"pid %d, restarts %d, started %s", st.Pid, st.RestartCount, st.StartedAt.Format(time.RFC3339Nano))
	}
	s.checkMetrics(clientValues)
}

// checkMetrics cross-checks /metrics with /debug/stats when wsd serves
// it (chaos.Checker.CheckMetrics).
func (s *stack) checkMetrics(clientValues []string) {
	invs, found := s.checker.CheckMetrics(s.ctx, append(clientValues, s.clientAddrs...))
	// Every scenario runs wsd's default telemetry, which serves /metrics:
	// a 404 is a regression, not a reason to skip the cross-checks.
	if !s.check("/metrics served", found, "200", "404") {
		return
	}
	for _, inv := range invs {
		s.check(inv.Name, inv.Pass, inv.Want, "%s", inv.Got)
	}
}

// record stores the result for the report (runs at test cleanup).
func (s *stack) record() {
	s.res.Finish(s.checker.Stop())
	if s.t.Failed() && s.res.Pass {
		s.res.Fail(fmt.Errorf("test failed outside a recorded invariant (see go test output)"))
	}
	s.t.Logf("%s: pass=%v, %d invariants, %d samples, %.1fs", s.res.Name, s.res.Pass, len(s.res.Invariants), len(s.res.Series), s.res.Duration.Seconds())
	resultsMu.Lock()
	results = append(results, s.res)
	resultsMu.Unlock()
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
