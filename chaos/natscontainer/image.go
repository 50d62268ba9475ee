package natscontainer

import (
	"context"

	"github.com/wsd-dev/wsd/chaos/images"
)

// Module and Version name the NATS server source the image is built
// from; docker-compose.yml uses the official image of the same version
// (nats:Version) when a registry is reachable.
const (
	Module  = "github.com/nats-io/nats-server/v2"
	Version = "2.15.3"
)

// ImageTag is the tag Image gives the built image. It names the version,
// not a content hash, so that docker-compose.yml can refer to it
// (NATS_IMAGE=wsd-e2e/nats:2.15.3) and a machine builds it once.
const ImageTag = images.Prefix + "nats:" + Version

// Container ports of the NATS server image.
const (
	ClientPort  = "4222/tcp"
	MonitorPort = "8222/tcp" // HTTP monitoring: /healthz, /varz, /connz, /subsz
)

// Image returns ImageTag, building it first unless the Docker engine
// already has it, built with the current image spec: nats-server
// compiled inside its own module at Version and wrapped FROM scratch
// (images.ModuleImage). It fails when the engine is unreachable, the
// module cannot be downloaded or the build fails; the error carries the
// go command's output.
func Image(ctx context.Context) (string, error) { return images.ModuleImage(ctx, image) }

// image is how Image builds. The command matches the official image's
// ports: clients on 4222, HTTP monitoring on 8222 (the official image
// reads them from a config file; a scratch image has none). The user is
// the images package's default, nobody: without JetStream the server
// writes no file.
var image = images.ModuleSpec{
	Tag:       ImageTag,
	Module:    Module,
	Version:   Version,
	Package:   ".",
	Name:      "nats",
	SpecLabel: "org.wsd.e2e.nats.spec",
	Wrap: images.Wrap{
		Cmd:    []string{"--port", "4222", "--http_port", "8222"},
		Expose: []string{ClientPort, MonitorPort},
		Labels: [][2]string{{"org.opencontainers.image.source", "https://github.com/nats-io/nats-server"}, {"org.opencontainers.image.version", "v" + Version}},
	},
}
