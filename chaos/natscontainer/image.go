package natscontainer

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

// imageMu serialises Image within a process: two tests asking at once
// must not compile the server twice.
var imageMu sync.Mutex

// Image returns ImageTag, building it first unless the Docker engine
// already has it, built with the current wrap: nats-server compiled
// inside its own module at Version (images.ModuleBinary, so its
// dependencies stay out of wsd's go.mod) and wrapped FROM scratch. It
// fails when the engine is unreachable, the module cannot be downloaded
// or the build fails; the error carries the go command's output.
func Image(ctx context.Context) (string, error) {
	imageMu.Lock()
	defer imageMu.Unlock()
	images.ConfigureTestcontainers()
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return "", fmt.Errorf("nats image: docker client: %w", err)
	}
	defer cli.Close()
	// The tag names the version only, so the image also carries the hash
	// of how it was wrapped: changing wrap rebuilds a cached image.
	if insp, err := cli.ImageInspect(ctx, ImageTag); err == nil {
		if insp.Config != nil && insp.Config.Labels[specLabel] == wrap.hash() {
			return ImageTag, nil
		}
	} else if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("nats image: inspect %s: %w", ImageTag, err)
	}
	bin, err := images.ModuleBinary(ctx, Module, Version, ".")
	if err != nil {
		return "", fmt.Errorf("nats image: %w", err)
	}
	built, err := images.FromBinary(ctx, bin, "nats", wrap.options()...)
	if err != nil {
		return "", fmt.Errorf("nats image: %w", err)
	}
	if _, err := cli.ImageTag(ctx, client.ImageTagOptions{Source: built, Target: ImageTag}); err != nil {
		return "", fmt.Errorf("nats image: tag %s as %s: %w", built, ImageTag, err)
	}
	return ImageTag, nil
}

// specLabel holds, on the built image, the hash of the imageSpec it was
// built with.
const specLabel = "org.wsd.e2e.nats.spec"

// imageSpec is everything besides the binary that shapes the image; the
// options and the cache check both derive from it, so they cannot drift.
type imageSpec struct {
	Cmd    []string
	Expose []string
	Labels [][2]string
}

// wrap is how the binary is wrapped. The command matches the official
// image's ports: clients on 4222, HTTP monitoring on 8222 (the official
// image reads them from a config file; a scratch image has none). The
// user is the images package's default, nobody: without JetStream the
// server writes no file.
var wrap = imageSpec{
	Cmd:    []string{"--port", "4222", "--http_port", "8222"},
	Expose: []string{ClientPort, MonitorPort},
	Labels: [][2]string{{"org.opencontainers.image.source", "https://github.com/nats-io/nats-server"}, {"org.opencontainers.image.version", "v" + Version}},
}

// hash identifies the spec in specLabel.
func (s imageSpec) hash() string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%+v", s)))
	return hex.EncodeToString(h[:8])
}

// options renders the spec for images.FromBinary, with specLabel.
func (s imageSpec) options() []images.Option {
	opts := []images.Option{images.WithExpose(s.Expose...), images.WithCmd(s.Cmd...)}
	for _, kv := range append(s.Labels, [2]string{specLabel, s.hash()}) {
		opts = append(opts, images.WithDockerfileLines(fmt.Sprintf("LABEL %s=%q", kv[0], kv[1])))
	}
	return opts
}
