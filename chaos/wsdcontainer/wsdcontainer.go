// Package wsdcontainer runs wsd in a container, testcontainers-module
// style: Run(ctx, img, opts...) returns a typed Container with the public
// and admin URLs on loopback, resource limits applied, and helpers the
// chaos suite needs (signals, pause, memory usage, exit state with the
// OOM-kill flag).
//
//	ctr, err := wsdcontainer.Run(ctx, img,
//		network.WithNetwork([]string{"wsd"}, nw),
//		wsdcontainer.WithConfig("heartbeat.ping_interval", "1s"),
//		wsdcontainer.WithMemoryLimit(128<<20),
//		wsdcontainer.WithNofile(256))
//	testcontainers.CleanupContainer(t, ctr)
package wsdcontainer

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/wsd-dev/wsd/chaos/images"
)

// Container ports of the wsd image.
const (
	PublicPort = "8080/tcp"
	AdminPort  = "9090/tcp"
)

// Container is a running wsd.
type Container struct {
	*testcontainers.DockerContainer
	docker   *client.Client
	wsURL    string
	adminURL string
	memLimit int64
}

// WithConfig sets a wsd configuration key (dotted, as in the YAML file:
// "backpressure.max_bytes") through its WSD_SECTION__KEY variable.
func WithConfig(key, value string) testcontainers.CustomizeRequestOption {
	env := "WSD_" + strings.ToUpper(strings.ReplaceAll(key, ".", "__"))
	return testcontainers.WithEnv(map[string]string{env: value})
}

// WithMemoryLimit caps the container's memory (no swap), so a leak ends
// in an OOM kill that State reports, instead of going unnoticed.
func WithMemoryLimit(bytes int64) testcontainers.CustomizeRequestOption {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.Memory = bytes
		hc.MemorySwap = bytes
	})
}

// WithNofile sets the container's RLIMIT_NOFILE (soft and hard).
func WithNofile(n int64) testcontainers.CustomizeRequestOption {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.Ulimits = append(hc.Ulimits, &container.Ulimit{Name: "nofile", Soft: n, Hard: n})
	})
}

// Run starts wsd from img (see images.Wsd) and waits until /healthz
// answers. Register testcontainers.CleanupContainer before checking the
// error: the container may exist even when Run fails.
func Run(ctx context.Context, img string, opts ...testcontainers.ContainerCustomizer) (*Container, error) {
	images.ConfigureTestcontainers()
	all := append([]testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(PublicPort, AdminPort),
		// Found by images.RemoveOrphans if this process dies uncleanly.
		testcontainers.WithLabels(images.SessionLabels()),
		// JSON logs at info: the suite reads them on failure. The
		// admin listener on every interface of the container (wsd's
		// default is loopback), set here too so that any image works.
		testcontainers.WithEnv(map[string]string{"WSD_LOG__LEVEL": "info", "WSD_ADMIN_LISTEN": ":9090"}),
		testcontainers.WithWaitStrategy(wait.ForHTTP("/healthz").WithPort(AdminPort).
			WithStartupTimeout(30 * time.Second).WithPollInterval(100 * time.Millisecond)),
	}, opts...)
	ctr, err := testcontainers.Run(ctx, img, all...)
	var c *Container
	if ctr != nil {
		c = &Container{DockerContainer: ctr}
	}
	if err != nil {
		return c, fmt.Errorf("wsd container: %w", err)
	}
	if c.docker, err = client.New(client.FromEnv); err != nil {
		return c, fmt.Errorf("wsd container: docker client: %w", err)
	}
	if err := c.endpoints(ctx); err != nil {
		return c, err
	}
	insp, err := ctr.Inspect(ctx)
	if err != nil {
		return c, fmt.Errorf("wsd container: inspect: %w", err)
	}
	c.memLimit = insp.HostConfig.Memory
	return c, nil
}

// endpoints reads the mapped ports: Docker assigns new host ports each
// time the container starts.
func (c *Container) endpoints(ctx context.Context) error {
	var err error
	if c.wsURL, err = c.PortEndpoint(ctx, PublicPort, "ws"); err != nil {
		return fmt.Errorf("wsd container: public endpoint: %w", err)
	}
	if c.adminURL, err = c.PortEndpoint(ctx, AdminPort, "http"); err != nil {
		return fmt.Errorf("wsd container: admin endpoint: %w", err)
	}
	return nil
}

// Start starts the container again after wsd exited (SIGTERM, SIGKILL),
// waits until /healthz answers and refreshes WSURL and AdminURL, which
// change with the new port mappings. It is a new wsd process: counters
// start from zero. It fails when the engine refuses or wsd does not
// become healthy within 30s.
func (c *Container) Start(ctx context.Context) error {
	if err := c.DockerContainer.Start(ctx); err != nil {
		return fmt.Errorf("wsd container: start: %w", err)
	}
	return c.endpoints(ctx)
}

// WSURL returns ws://127.0.0.1:<port> of the public listener (new after
// Start).
func (c *Container) WSURL() string { return c.wsURL }

// AdminURL returns http://127.0.0.1:<port> of the admin listener.
func (c *Container) AdminURL() string { return c.adminURL }

// MemoryLimit returns the memory limit set with WithMemoryLimit (0: none).
func (c *Container) MemoryLimit() int64 { return c.memLimit }

// Signal sends sig ("SIGTERM", "SIGKILL", ...) to wsd.
func (c *Container) Signal(ctx context.Context, sig string) error {
	if _, err := c.docker.ContainerKill(ctx, c.GetContainerID(), client.ContainerKillOptions{Signal: sig}); err != nil {
		return fmt.Errorf("wsd container: send %s: %w", sig, err)
	}
	return nil
}

// Pause freezes every process of the container (cgroup freezer): its
// sockets stay open but nothing is read or answered.
func (c *Container) Pause(ctx context.Context) error {
	if _, err := c.docker.ContainerPause(ctx, c.GetContainerID(), client.ContainerPauseOptions{}); err != nil {
		return fmt.Errorf("wsd container: pause: %w", err)
	}
	return nil
}

// Unpause resumes a paused container.
func (c *Container) Unpause(ctx context.Context) error {
	if _, err := c.docker.ContainerUnpause(ctx, c.GetContainerID(), client.ContainerUnpauseOptions{}); err != nil {
		return fmt.Errorf("wsd container: unpause: %w", err)
	}
	return nil
}

// MemoryUsage returns the container's memory use as the OOM killer sees
// it minus reclaimable page cache (what `docker stats` shows).
func (c *Container) MemoryUsage(ctx context.Context) (int64, error) {
	return MemoryUsage(ctx, c.docker, c.GetContainerID())
}

// MemoryUsage reads one stats sample of container id (any container).
func MemoryUsage(ctx context.Context, docker *client.Client, id string) (int64, error) {
	res, err := docker.ContainerStats(ctx, id, client.ContainerStatsOptions{})
	if err != nil {
		return 0, fmt.Errorf("container stats: %w", err)
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("decode container stats: %w", err)
	}
	m := st.MemoryStats
	cache := m.Stats["total_inactive_file"] // cgroup v1
	if v, ok := m.Stats["inactive_file"]; ok && cache == 0 {
		cache = v // cgroup v2
	}
	if cache > m.Usage {
		cache = 0
	}
	return int64(m.Usage - cache), nil
}

// ExitState is how the container ended (or that it is still running).
type ExitState struct {
	Running   bool
	ExitCode  int
	OOMKilled bool
	// StartedAt and FinishedAt are the engine's timestamps (FinishedAt is
	// zero while running).
	StartedAt, FinishedAt time.Time
	// Pid is the wsd process's host PID (0 when not running);
	// RestartCount is how often the engine restarted the container. A
	// scenario that ends with either changed has lost the process it
	// started with: wsd crashed, even if something brought it back.
	Pid, RestartCount int
}

// ExitState returns the container's run state, including Docker's OOMKilled
// flag: true when the memory limit killed wsd.
func (c *Container) ExitState(ctx context.Context) (ExitState, error) {
	insp, err := c.docker.ContainerInspect(ctx, c.GetContainerID(), client.ContainerInspectOptions{})
	if err != nil {
		return ExitState{}, fmt.Errorf("wsd container: inspect: %w", err)
	}
	s := insp.Container.State
	es := ExitState{Running: s.Running, ExitCode: s.ExitCode, OOMKilled: s.OOMKilled, Pid: s.Pid, RestartCount: insp.Container.RestartCount}
	es.StartedAt, _ = time.Parse(time.RFC3339Nano, s.StartedAt)
	es.FinishedAt, _ = time.Parse(time.RFC3339Nano, s.FinishedAt)
	return es, nil
}

// LogText returns the container's output so far (for failure messages).
func (c *Container) LogText(ctx context.Context) string {
	rc, err := c.Logs(ctx)
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", err)
	}
	defer rc.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

// Close releases the Docker API client (not the container: terminate it
// with testcontainers.CleanupContainer or Terminate).
func (c *Container) Close() error {
	if c.docker == nil {
		return nil
	}
	return c.docker.Close()
}

// CPUUsage returns the CPU time wsd's cgroup has used since the container
// started (the cgroup's total usage, what `docker stats` derives its
// percentage from). The difference of two readings is the server CPU a
// phase cost, independent of how many cores the host shares with the
// clients.
func (c *Container) CPUUsage(ctx context.Context) (time.Duration, error) {
	res, err := c.docker.ContainerStats(ctx, c.GetContainerID(), client.ContainerStatsOptions{})
	if err != nil {
		return 0, fmt.Errorf("container stats: %w", err)
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("decode container stats: %w", err)
	}
	return time.Duration(st.CPUStats.CPUUsage.TotalUsage), nil
}
