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

// scenario is what every scenario (a stack, a cluster) records into.
type scenario struct {
	t   *testing.T
	ctx context.Context
	res *chaos.Result
}

// wsdProc is one wsd container of a scenario and what its end is
// checked against.
type wsdProc struct {
	wsd     *wsdcontainer.Container
	checker *chaos.Checker
	// started is the container state at the baseline: the process the
	// scenario must end with.
	started wsdcontainer.ExitState
	// clientAddrs are the addresses wsd sees clients connect from (the
	// network gateway): they must never appear in /metrics.
	clientAddrs []string
}

// stack is one scenario's running system.
type stack struct {
	scenario
	wsdProc
	tox     *toxiproxy.Container
	target  chaos.Target
	proxied chaos.Target // through Toxiproxy (zero without it)
	cfg     service.Config
	bound   int64
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

// prepare skips the test without a Docker engine (fails it under
// CI=true), builds the wsd and Toxiproxy images and creates the
// scenario's network; it stops the test when it cannot.
func prepare(t *testing.T) (wsdImg, toxImg string, nw *testcontainers.DockerNetwork) {
	t.Helper()
	requireDocker(t)
	wsdImg, toxImg, err := buildImages(t.Context())
	if err != nil {
		t.Fatalf("build images: %v", err)
	}
	return wsdImg, toxImg, newNetwork(t.Context(), t)
}

// newNetwork creates a Docker network with the session labels, removed
// at test end, pass or fail; it stops the test when it cannot.
func newNetwork(ctx context.Context, t *testing.T) *testcontainers.DockerNetwork {
	t.Helper()
	nw, err := network.New(ctx, network.WithLabels(images.SessionLabels()))
	testcontainers.CleanupNetwork(t, nw)
	if err != nil {
		t.Fatalf("create network: %v", err)
	}
	return nw
}

// startStack starts the containers on a fresh network, takes the
// baseline and starts sampling. Everything is removed at test end, pass
// or fail.
func startStack(t *testing.T, name, description string, o stackOpts) *stack {
	t.Helper()
	wsdImg, toxImg, nw := prepare(t)
	ctx := t.Context()

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

	s := &stack{scenario: scenario{t: t, ctx: ctx, res: chaos.NewResult(name, description)}, wsdProc: wsdProc{wsd: wsd}, cfg: cfg, bound: bound}
	s.res.MemoryBound = bound
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

	warmURL := s.target.EchoURL()
	if o.warmToken != "" {
		warmURL += "?access_token=" + o.warmToken
	}
	if err := s.baseline(ctx, admin, warmURL); err != nil {
		t.Fatalf("%v\nwsd logs:\n%s", err, wsd.LogText(ctx))
	}
	t.Cleanup(func() { s.store(s.checker.Stop()) })
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
func (s *scenario) check(name string, pass bool, want, got string, args ...any) bool {
	s.t.Helper()
	if !s.res.Check(name, pass, want, got, args...) {
		s.t.Errorf("%s: want %s, got %s", name, want, fmt.Sprintf(got, args...))
		return false
	}
	return true
}

// checkAll records invs, their names prefixed with prefix.
func (s *scenario) checkAll(prefix string, invs []chaos.Invariant) {
	s.t.Helper()
	for _, inv := range invs {
		s.check(prefix+inv.Name, inv.Pass, inv.Want, "%s", inv.Got)
	}
}

// store finishes the result with series (the memory samples the report
// charts) and stores it for the report; it runs at test cleanup.
func (s *scenario) store(series []chaos.Sample) {
	s.res.Finish(series)
	if s.t.Failed() && s.res.Pass {
		s.res.Fail(fmt.Errorf("test failed outside a recorded invariant (see go test output)"))
	}
	s.t.Logf("%s: pass=%v, %d invariants, %d samples, %.1fs", s.res.Name, s.res.Pass, len(s.res.Invariants), len(s.res.Series), s.res.Duration.Seconds())
	resultsMu.Lock()
	results = append(results, s.res)
	resultsMu.Unlock()
}

// baseline warms p up with one echo round trip on warmURL (so that
// lazily started runtime and server machinery is in the baseline, not
// counted as a leak), takes the checker's baseline, the process state
// and the client addresses, and starts sampling.
func (p *wsdProc) baseline(ctx context.Context, admin *chaos.Admin, warmURL string) error {
	warm, err := chaos.Dial(ctx, warmURL)
	if err != nil {
		return fmt.Errorf("warm-up connection: %w", err)
	}
	_ = warm.WriteMessage(chaos.OpText, []byte("warm"))
	_, _, _ = warm.ReadMessage()
	_ = warm.CloseGracefully(2 * time.Second)
	p.checker = chaos.NewChecker(admin, p.wsd.MemoryUsage, chaos.DefaultTolerance)
	if _, err := p.checker.Baseline(ctx, 10*time.Second); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	if p.started, err = p.wsd.ExitState(ctx); err != nil {
		return fmt.Errorf("inspect wsd: %w", err)
	}
	p.clientAddrs = nil
	if insp, err := p.wsd.Inspect(ctx); err == nil {
		for _, ep := range insp.NetworkSettings.Networks {
			if ep.Gateway.IsValid() {
				p.clientAddrs = append(p.clientAddrs, ep.Gateway.String())
			}
		}
	}
	p.checker.Start(ctx, 250*time.Millisecond)
	return nil
}

// checkEnd records on s the invariants every wsd ends a scenario with,
// each name prefixed with prefix ("replica a: " in a cluster): memory
// under bound over the run (it stops the checker), no OOM kill, still
// the process of the baseline (no crash, no restart), and /metrics
// served, consistent with /debug/stats and free of clientValues and the
// client addresses.
func (p *wsdProc) checkEnd(s *scenario, prefix string, bound int64, clientValues []string) {
	s.t.Helper()
	p.checker.Stop()
	inv := p.checker.CheckMemory(bound)
	s.check(prefix+inv.Name, inv.Pass, inv.Want, "%s", inv.Got)
	st, err := p.wsd.ExitState(s.ctx)
	if err != nil {
		s.check(prefix+"wsd container inspectable", false, "inspect ok", "%v", err)
	} else {
		s.check(prefix+"not OOM-killed", !st.OOMKilled, "OOMKilled=false", "OOMKilled=%v", st.OOMKilled)
		s.check(prefix+"wsd still running", st.Running, "running", "running=%v exit=%d", st.Running, st.ExitCode)
		b := p.started
		s.check(prefix+"the same wsd process (no crash, no restart)",
			st.Pid == b.Pid && st.RestartCount == b.RestartCount && st.StartedAt.Equal(b.StartedAt),
			fmt.Sprintf("pid %d, restarts %d, started %s", b.Pid, b.RestartCount, b.StartedAt.Format(time.RFC3339Nano)),
			"pid %d, restarts %d, started %s", st.Pid, st.RestartCount, st.StartedAt.Format(time.RFC3339Nano))
	}
	invs, found := p.checker.CheckMetrics(s.ctx, append(slices.Clone(clientValues), p.clientAddrs...))
	// Every scenario runs wsd's default telemetry, which serves /metrics:
	// a 404 is a regression, not a reason to skip the cross-checks.
	if s.check(prefix+"/metrics served", found, "200", "404") {
		s.checkAll(prefix, invs)
	}
}

// fatal records err as the scenario's failure and stops the test.
func (s *stack) fatal(format string, args ...any) {
	s.t.Helper()
	err := fmt.Errorf(format, args...)
	s.res.Fail(err)
	s.t.Fatalf("%v\nwsd logs (tail):\n%s", err, tail(s.wsd.LogText(context.Background()), 40))
}

// finish asserts the shared invariants: counters back to the baseline
// within quiet, then checkEnd's (memory under the bound, no OOM kill,
// the same process, /metrics consistent and free of clientValues).
func (s *stack) finish(quiet time.Duration, clientValues ...string) {
	s.t.Helper()
	s.checkAll("", s.checker.CheckBaseline(s.ctx, quiet))
	s.checkEnd(&s.scenario, "", s.bound, clientValues)
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
