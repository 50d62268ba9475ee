// Package natscontainer runs a NATS server in a container, in the style
// of a testcontainers-go module: Run(ctx, img, opts...) starts it, waits
// until its monitoring /healthz answers (the client listener is then
// accepting), and returns a typed Container with the client URL on
// loopback, the URL other containers on its network use, and the HTTP
// monitoring endpoints the chaos suite reads. Ports are mapped by
// Docker; none is fixed on the host.
//
//	img, err := natscontainer.Image(ctx) // wsd-e2e/nats:2.15.3, built once
//	n, err := natscontainer.Run(ctx, img, network.WithNetwork([]string{"nats"}, nw))
//	testcontainers.CleanupContainer(t, n)
//	if err != nil { ... }
//	n.InternalURL()              // nats://nats:4222, for wsd containers
//	n.Stop(ctx, nil); n.Start(ctx) // a broker outage and its end
//	subs, err := n.Subscriptions(ctx)
package natscontainer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/wsd-dev/wsd/chaos/images"
)

// Container is a running (or stopped) NATS server.
type Container struct {
	*testcontainers.DockerContainer
	alias string
	hc    *http.Client

	mu         sync.Mutex
	url        string
	monitorURL string
}

// Run starts a NATS server from img (see Image) and waits until it
// accepts clients. Put it on a network with an alias, e.g.
// network.WithNetwork([]string{"nats"}, nw), so that InternalURL names
// it for other containers. Register testcontainers.CleanupContainer
// before checking the error: the container may exist even when Run fails.
func Run(ctx context.Context, img string, opts ...testcontainers.ContainerCustomizer) (*Container, error) {
	images.ConfigureTestcontainers()
	var alias string
	all := append([]testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(ClientPort, MonitorPort),
		// Found by images.RemoveOrphans if this process dies uncleanly.
		testcontainers.WithLabels(images.SessionLabels()),
		// /healthz answers 200 once the client listener accepts: no
		// fixed delay, and it holds again after Start.
		testcontainers.WithWaitStrategy(wait.ForHTTP("/healthz").WithPort(MonitorPort).
			WithStartupTimeout(30 * time.Second).WithPollInterval(100 * time.Millisecond)),
	}, opts...)
	// Last, so it sees the aliases the caller's options set.
	all = append(all, testcontainers.CustomizeRequestOption(func(req *testcontainers.GenericContainerRequest) error {
		for _, n := range req.Networks {
			if a := req.NetworkAliases[n]; len(a) > 0 {
				alias = a[0]
				break
			}
		}
		return nil
	}))
	ctr, err := testcontainers.Run(ctx, img, all...)
	var c *Container
	if ctr != nil {
		c = &Container{DockerContainer: ctr, alias: alias, hc: &http.Client{Timeout: 5 * time.Second}}
	}
	if err != nil {
		return c, fmt.Errorf("nats container: %w", err)
	}
	if err := c.refresh(ctx); err != nil {
		return c, err
	}
	return c, nil
}

// refresh reads the mapped ports again: Docker assigns new host ports
// when a stopped container starts.
func (c *Container) refresh(ctx context.Context) error {
	url, err := c.PortEndpoint(ctx, ClientPort, "nats")
	if err != nil {
		return fmt.Errorf("nats container: client endpoint: %w", err)
	}
	mon, err := c.PortEndpoint(ctx, MonitorPort, "http")
	if err != nil {
		return fmt.Errorf("nats container: monitor endpoint: %w", err)
	}
	c.mu.Lock()
	c.url, c.monitorURL = url, mon
	c.mu.Unlock()
	return nil
}

// Start starts a stopped server again (the end of a broker outage),
// waits until it accepts clients and refreshes URL and MonitorURL. Stop
// (from testcontainers.DockerContainer) is the outage: SIGTERM, then
// SIGKILL after the timeout. It fails when the engine refuses or the
// server does not become healthy within 30s.
func (c *Container) Start(ctx context.Context) error {
	if err := c.DockerContainer.Start(ctx); err != nil {
		return fmt.Errorf("nats container: start: %w", err)
	}
	return c.refresh(ctx)
}

// URL returns nats://127.0.0.1:<port>, the client listener for processes
// on the host. It changes when the container is started again.
func (c *Container) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.url
}

// MonitorURL returns http://127.0.0.1:<port> of the HTTP monitoring
// listener. It changes when the container is started again.
func (c *Container) MonitorURL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.monitorURL
}

// InternalURL returns nats://<alias>:4222, the client listener for
// containers on the server's network; it stays valid across Stop and
// Start. It is "" when Run was given no network alias.
func (c *Container) InternalURL() string {
	if c.alias == "" {
		return ""
	}
	return "nats://" + c.alias + ":" + strings.TrimSuffix(ClientPort, "/tcp")
}

// Subscriptions returns the server's subscription count (/subsz
// num_subscriptions): every client's interest, so a subscriber that
// disconnected is gone from it.
func (c *Container) Subscriptions(ctx context.Context) (int, error) {
	var v struct {
		N int `json:"num_subscriptions"`
	}
	if err := c.monitor(ctx, "/subsz", &v); err != nil {
		return 0, err
	}
	return v.N, nil
}

// Connections returns the number of client connections (/connz
// num_connections).
func (c *Container) Connections(ctx context.Context) (int, error) {
	var v struct {
		N int `json:"num_connections"`
	}
	if err := c.monitor(ctx, "/connz", &v); err != nil {
		return 0, err
	}
	return v.N, nil
}

// monitor GETs a monitoring endpoint and decodes its JSON into v.
func (c *Container) monitor(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.MonitorURL()+path, nil)
	if err != nil {
		return fmt.Errorf("nats monitor %s: %w", path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("nats monitor %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("nats monitor %s: read: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("nats monitor %s: HTTP %d", path, resp.StatusCode)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("nats monitor %s: decode: %w", path, err)
	}
	return nil
}
