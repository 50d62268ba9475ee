package jaeger

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/wsd-dev/wsd/chaos/images"
)

// Container is a running Jaeger all-in-one (in-memory storage).
type Container struct {
	*testcontainers.DockerContainer
	// Client queries the container's /api on its loopback port.
	*Client
	otlpHTTP string
}

// Run starts Jaeger from img (see Image) and waits until its query API
// answers. Put it on a network with an alias, e.g.
// network.WithNetwork([]string{"jaeger"}, nw), so other containers export
// to http://jaeger:4318. Register testcontainers.CleanupContainer before
// checking the error: the container may exist even when Run fails.
func Run(ctx context.Context, img string, opts ...testcontainers.ContainerCustomizer) (*Container, error) {
	images.ConfigureTestcontainers()
	all := append([]testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(QueryPort, OTLPHTTPPort, OTLPGRPCPort),
		// Found by images.RemoveOrphans if this process dies uncleanly.
		testcontainers.WithLabels(images.SessionLabels()),
		// /api/services answers only once the query extension and its
		// storage are up; the OTLP receivers start before it.
		testcontainers.WithWaitStrategy(wait.ForHTTP("/api/services").WithPort(QueryPort).
			WithStatusCodeMatcher(func(s int) bool { return s == http.StatusOK }).
			WithStartupTimeout(60 * time.Second).WithPollInterval(200 * time.Millisecond)),
	}, opts...)
	ctr, err := testcontainers.Run(ctx, img, all...)
	var c *Container
	if ctr != nil {
		c = &Container{DockerContainer: ctr}
	}
	if err != nil {
		return c, fmt.Errorf("jaeger container: %w", err)
	}
	query, err := ctr.PortEndpoint(ctx, QueryPort, "http")
	if err != nil {
		return c, fmt.Errorf("jaeger container: query endpoint: %w", err)
	}
	c.Client = NewClient(query)
	if c.otlpHTTP, err = ctr.PortEndpoint(ctx, OTLPHTTPPort, "http"); err != nil {
		return c, fmt.Errorf("jaeger container: OTLP endpoint: %w", err)
	}
	return c, nil
}

// OTLPHTTPEndpoint returns http://127.0.0.1:<port> of the OTLP/HTTP
// receiver, for exporters running on the host. Containers on the same
// network use http://<alias>:4318.
func (c *Container) OTLPHTTPEndpoint() string { return c.otlpHTTP }
