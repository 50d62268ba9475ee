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

// Image returns ImageTag, building it first unless the Docker engine
// already has it, built with the current image spec. The build compiles
// Jaeger inside its own module (its go.mod has a replace directive; a
// few minutes on a cold Go build cache; the module comes from the Go
// module proxy), wraps the binary FROM scratch and tags it
// (images.ModuleImage). It fails when the engine is unreachable, the
// module cannot be downloaded or the build fails; the error carries the
// go command's output.
func Image(ctx context.Context) (string, error) { return images.ModuleImage(ctx, image) }

// image is how Image builds. JAEGER_LISTEN_HOST: Jaeger listens on
// localhost otherwise, unreachable from other containers; user 10001 is
// the official image's.
var image = images.ModuleSpec{
	Tag:       ImageTag,
	Module:    Module,
	Version:   Version,
	Package:   "./cmd/jaeger",
	Name:      "jaeger",
	SpecLabel: "org.wsd.e2e.jaeger.spec",
	Wrap: images.Wrap{
		Env:    [][2]string{{"JAEGER_LISTEN_HOST", "0.0.0.0"}},
		User:   "10001",
		Expose: []string{OTLPGRPCPort, OTLPHTTPPort, QueryPort, HealthPort},
		Labels: [][2]string{{"org.opencontainers.image.source", "https://" + Module}, {"org.opencontainers.image.version", "v" + Version}},
	},
}
