// Package jaeger builds a Jaeger v2 all-in-one image offline and runs it
// as a typed container, so the e2e suite can check that wsd's traces land
// in a real Jaeger through its HTTP query API.
//
//	img, err := jaeger.Image(ctx)            // wsd-e2e/jaeger:1.76.0, built once
//	j, err := jaeger.Run(ctx, img, network.WithNetwork([]string{"jaeger"}, nw))
//	testcontainers.CleanupContainer(t, j)
//	traces, err := j.Traces(ctx, jaeger.Query{Service: "wsd", Operation: "ws.session"})
//
// The official jaegertracing/jaeger image needs a registry; this one is
// compiled from the Go module github.com/jaegertracing/jaeger at Version
// (./cmd/jaeger, CGO_ENABLED=0) and wrapped FROM scratch by chaos/images.
// Its web UI is a placeholder (the npm-built assets are not in the Go
// module); the /api query endpoints work.
package jaeger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/wsd-dev/wsd/chaos/images"
)

// Module and Version name the Jaeger source the image is built from.
// Go module v1.76.0 is Jaeger v2.13.0 (the project tags both numbers on
// one commit); docker-compose.yml uses the matching official image.
const (
	Module  = "github.com/jaegertracing/jaeger"
	Version = "1.76.0"
)

// ImageTag is the tag Image gives the built image. It names the version,
// not a content hash, so that a machine builds it once: compiling Jaeger
// takes minutes and its inputs are pinned by Version.
const ImageTag = images.Prefix + "jaeger:" + Version

// Container ports of the Jaeger all-in-one image.
const (
	OTLPGRPCPort = "4317/tcp"
	OTLPHTTPPort = "4318/tcp"
	QueryPort    = "16686/tcp" // web UI and /api query API
	HealthPort   = "13133/tcp" // healthcheckv2 extension
)

// imageMu serialises Image within a process: two tests asking at once
// must not compile Jaeger twice.
var imageMu sync.Mutex

// Image returns ImageTag, building it first unless the Docker engine
// already has it, built with the current wrap. The build compiles Jaeger
// (a few minutes on a cold Go build cache; the module comes from the Go
// module proxy), wraps the binary FROM scratch as wrap says, and tags it. It fails when the engine is
// unreachable, the module cannot be downloaded or the build fails; the
// error carries the go command's output.
func Image(ctx context.Context) (string, error) {
	imageMu.Lock()
	defer imageMu.Unlock()
	images.ConfigureTestcontainers()
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return "", fmt.Errorf("jaeger image: docker client: %w", err)
	}
	defer cli.Close()
	// The tag names the version only, so the image also carries the hash
	// of how it was wrapped: changing wrap rebuilds a cached image instead
	// of silently using the old one.
	if insp, err := cli.ImageInspect(ctx, ImageTag); err == nil {
		if insp.Config != nil && insp.Config.Labels[specLabel] == wrap.hash() {
			return ImageTag, nil
		}
	} else if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("jaeger image: inspect %s: %w", ImageTag, err)
	}

	// Jaeger's go.mod has a replace directive: it must be built inside
	// its own module, which ModuleBinary does.
	bin, err := images.ModuleBinary(ctx, Module, Version, "./cmd/jaeger")
	if err != nil {
		return "", fmt.Errorf("jaeger image: %w", err)
	}
	built, err := images.FromBinary(ctx, bin, "jaeger", wrap.options()...)
	if err != nil {
		return "", fmt.Errorf("jaeger image: %w", err)
	}
	if _, err := cli.ImageTag(ctx, client.ImageTagOptions{Source: built, Target: ImageTag}); err != nil {
		return "", fmt.Errorf("jaeger image: tag %s as %s: %w", built, ImageTag, err)
	}
	return ImageTag, nil
}

// specLabel holds, on the built image, the hash of the imageSpec it was
// built with.
const specLabel = "org.wsd.e2e.jaeger.spec"

// imageSpec is everything besides the binary that shapes the image; the
// options and the cache check both derive from it, so they cannot drift.
type imageSpec struct {
	Env    [][2]string
	User   string
	Expose []string
	Labels [][2]string
}

// wrap is how the Jaeger binary is wrapped. JAEGER_LISTEN_HOST: Jaeger
// listens on localhost otherwise, unreachable from other containers; user
// 10001 is the official image's.
var wrap = imageSpec{
	Env:    [][2]string{{"JAEGER_LISTEN_HOST", "0.0.0.0"}},
	User:   "10001",
	Expose: []string{OTLPGRPCPort, OTLPHTTPPort, QueryPort, HealthPort},
	Labels: [][2]string{{"org.opencontainers.image.source", "https://" + Module}, {"org.opencontainers.image.version", "v" + Version}},
}

// hash identifies the spec in specLabel.
func (s imageSpec) hash() string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%+v", s)))
	return hex.EncodeToString(h[:8])
}

// options renders the spec for images.FromBinary, with specLabel.
func (s imageSpec) options() []images.Option {
	opts := []images.Option{images.WithExpose(s.Expose...), images.WithUser(s.User)}
	for _, kv := range s.Env {
		opts = append(opts, images.WithEnv(kv[0], kv[1]))
	}
	for _, kv := range append(s.Labels, [2]string{specLabel, s.hash()}) {
		opts = append(opts, images.WithDockerfileLines(fmt.Sprintf("LABEL %s=%q", kv[0], kv[1])))
	}
	return opts
}
