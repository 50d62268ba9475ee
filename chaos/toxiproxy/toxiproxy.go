// Package toxiproxy runs a Toxiproxy server in a container, in the style
// of a testcontainers-go module (the upstream module is not vendored
// here): Run starts it with the proxies declared by WithProxy, waits for
// the API, and returns a typed Container whose accessors give the API
// client and each proxy's loopback address. Ports are mapped by Docker;
// none is fixed on the host.
//
//	ctr, err := toxiproxy.Run(ctx, img,
//		network.WithNetwork([]string{"toxiproxy"}, nw),
//		toxiproxy.WithProxy("wsd", "wsd:8080"))
//	testcontainers.CleanupContainer(t, ctr)
//	if err != nil { ... }
//	addr, _ := ctr.ProxyAddr(ctx, "wsd") // 127.0.0.1:<mapped port>
//	p, _ := ctr.Proxy("wsd")
//	p.AddToxic("lat", "latency", "downstream", 1, toxiclient.Attributes{"latency": 100})
package toxiproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/wsd-dev/wsd/chaos/images"
)

// APIPort is the container port of the Toxiproxy HTTP API.
const APIPort = "8474/tcp"

// FirstProxyPort is the container port of the first proxy; the n-th
// proxy declared with WithProxy listens on FirstProxyPort+n.
const FirstProxyPort = 8666

// Container is a running Toxiproxy server.
type Container struct {
	*testcontainers.DockerContainer
	api     *toxiclient.Client
	uri     string
	proxies map[string]int // name → container port
}

type settings struct {
	proxies []proxySpec
}

type proxySpec struct{ name, upstream string }

// Option is a Toxiproxy-specific Run option. It also satisfies
// testcontainers.ContainerCustomizer so it can be mixed with generic ones.
type Option func(*settings)

// Customize implements testcontainers.ContainerCustomizer; the work is
// done by Run, which reads the settings.
func (Option) Customize(*testcontainers.GenericContainerRequest) error { return nil }

// WithProxy declares a proxy created at start: it listens on a port of
// its own, mapped to loopback, and forwards to upstream (host:port as
// seen from the container, e.g. a network alias).
func WithProxy(name, upstream string) Option {
	return func(s *settings) { s.proxies = append(s.proxies, proxySpec{name, upstream}) }
}

// Run starts a Toxiproxy container from img (see images.Toxiproxy),
// creates the declared proxies and waits until the API answers. On error
// the returned container may be non-nil and must still be terminated:
// register testcontainers.CleanupContainer before checking the error.
func Run(ctx context.Context, img string, opts ...testcontainers.ContainerCustomizer) (*Container, error) {
	images.ConfigureTestcontainers()
	var s settings
	for _, o := range opts {
		if to, ok := o.(Option); ok {
			to(&s)
		}
	}
	ports := []string{APIPort}
	proxies := map[string]int{}
	for i, p := range s.proxies {
		if _, dup := proxies[p.name]; dup {
			return nil, fmt.Errorf("toxiproxy: proxy %q declared twice", p.name)
		}
		port := FirstProxyPort + i
		proxies[p.name] = port
		ports = append(ports, strconv.Itoa(port)+"/tcp")
	}
	all := append([]testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(ports...),
		// Found by images.RemoveOrphans if this process dies uncleanly.
		testcontainers.WithLabels(images.SessionLabels()),
		testcontainers.WithWaitStrategy(wait.ForHTTP("/version").WithPort(APIPort).
			WithStartupTimeout(30 * time.Second).WithPollInterval(100 * time.Millisecond)),
	}, opts...)
	ctr, err := testcontainers.Run(ctx, img, all...)
	var c *Container
	if ctr != nil {
		c = &Container{DockerContainer: ctr, proxies: proxies}
	}
	if err != nil {
		return c, fmt.Errorf("toxiproxy: run: %w", err)
	}
	c.uri, err = ctr.PortEndpoint(ctx, APIPort, "http")
	if err != nil {
		return c, fmt.Errorf("toxiproxy: API endpoint: %w", err)
	}
	c.api = toxiclient.NewClient(c.uri)
	for _, p := range s.proxies {
		listen := "0.0.0.0:" + strconv.Itoa(proxies[p.name])
		if _, err := c.api.CreateProxy(p.name, listen, p.upstream); err != nil {
			return c, fmt.Errorf("toxiproxy: create proxy %s → %s: %w", p.name, p.upstream, err)
		}
	}
	return c, nil
}

// Client returns the Toxiproxy API client.
func (c *Container) Client() *toxiclient.Client { return c.api }

// URI returns the API's base URL on loopback (http://127.0.0.1:port).
func (c *Container) URI() string { return c.uri }

// Proxy returns the proxy declared with name.
func (c *Container) Proxy(name string) (*toxiclient.Proxy, error) {
	if _, ok := c.proxies[name]; !ok {
		return nil, fmt.Errorf("toxiproxy: no proxy %q declared", name)
	}
	p, err := c.api.Proxy(name)
	if err != nil {
		return nil, fmt.Errorf("toxiproxy: get proxy %s: %w", name, err)
	}
	return p, nil
}

// ProxyAddr returns the host:port on loopback where the proxy name
// accepts connections.
func (c *Container) ProxyAddr(ctx context.Context, name string) (string, error) {
	port, ok := c.proxies[name]
	if !ok {
		return "", fmt.Errorf("toxiproxy: no proxy %q declared", name)
	}
	ep, err := c.PortEndpoint(ctx, strconv.Itoa(port)+"/tcp", "")
	if err != nil {
		return "", fmt.Errorf("toxiproxy: mapped port of %s: %w", name, err)
	}
	if _, _, err := net.SplitHostPort(ep); err != nil {
		return "", fmt.Errorf("toxiproxy: endpoint %q: %w", ep, err)
	}
	return ep, nil
}

// Pause freezes the Toxiproxy process (cgroup freezer): every proxied
// connection goes silent in both directions without being closed, a
// blackholed path. Unpause resumes it.
func (c *Container) Pause(ctx context.Context) error {
	return c.docker(ctx, func(cli *client.Client) error {
		_, err := cli.ContainerPause(ctx, c.GetContainerID(), client.ContainerPauseOptions{})
		return err
	})
}

// Unpause resumes a paused container.
func (c *Container) Unpause(ctx context.Context) error {
	return c.docker(ctx, func(cli *client.Client) error {
		_, err := cli.ContainerUnpause(ctx, c.GetContainerID(), client.ContainerUnpauseOptions{})
		return err
	})
}

func (c *Container) docker(_ context.Context, f func(*client.Client) error) error {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return fmt.Errorf("toxiproxy: docker client: %w", err)
	}
	defer cli.Close()
	if err := f(cli); err != nil {
		return fmt.Errorf("toxiproxy: %w", err)
	}
	return nil
}

// ResetToxics removes every toxic and re-enables every proxy, so one
// scenario's faults do not leak into the next.
func (c *Container) ResetToxics() error {
	if c.api == nil {
		return errors.New("toxiproxy: container not started")
	}
	if err := c.api.ResetState(); err != nil {
		return fmt.Errorf("toxiproxy: reset: %w", err)
	}
	return nil
}
