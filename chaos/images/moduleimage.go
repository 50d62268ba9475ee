package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// ModuleSpec describes an image ModuleImage builds from the main package
// of a third-party Go module pinned at a version (the NATS server,
// Jaeger), so the suite runs it without a registry.
type ModuleSpec struct {
	// Tag is the tag the image gets (Prefix+"nats:2.15.3"). It names the
	// version, not a content hash, so that compose files can refer to it
	// and a machine builds it once; the inputs are pinned by Version.
	Tag string
	// Module, Version (without the leading v) and Package (the main
	// package inside the module: "." or "./cmd/jaeger") are what
	// ModuleBinary compiles.
	Module, Version, Package string
	// Name is the image name FromBinary builds under, and the start of
	// every error ("nats image: ...").
	Name string
	// SpecLabel is the image label that holds the hash of Wrap: the tag
	// names the version only, so the label is how a cached image built
	// with another Wrap is recognised and rebuilt instead of silently
	// used.
	SpecLabel string
	// Wrap is how the binary is wrapped.
	Wrap Wrap
}

// Wrap is everything besides the binary that shapes a ModuleSpec's
// image. The FromBinary options and the cache check both derive from it,
// so they cannot drift.
type Wrap struct {
	// Env are ENV lines, in order.
	Env [][2]string
	// User is the USER line; "" keeps FromBinary's default (nobody).
	User string
	// Cmd are the default arguments; nil: none.
	Cmd []string
	// Expose are the EXPOSE lines ("4222/tcp").
	Expose []string
	// Labels are LABEL lines (OCI source and version), in order.
	Labels [][2]string
}

// hash identifies w in a ModuleSpec's SpecLabel.
func (w Wrap) hash() string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%+v", w)))
	return hex.EncodeToString(h[:8])
}

// options renders w for FromBinary, with specLabel set to w's hash.
func (w Wrap) options(specLabel string) []Option {
	opts := []Option{WithExpose(w.Expose...)}
	if w.User != "" {
		opts = append(opts, WithUser(w.User))
	}
	if len(w.Cmd) > 0 {
		opts = append(opts, WithCmd(w.Cmd...))
	}
	for _, kv := range w.Env {
		opts = append(opts, WithEnv(kv[0], kv[1]))
	}
	for _, kv := range w.Labels {
		opts = append(opts, label(kv[0], kv[1]))
	}
	return append(opts, label(specLabel, w.hash()))
}

func label(key, value string) Option {
	return WithDockerfileLines(fmt.Sprintf("LABEL %s=%q", key, value))
}

// moduleMu serialises ModuleImage per tag within a process: two tests
// asking at once must not compile the same server twice, while two
// different images still build side by side.
var (
	moduleMuMu sync.Mutex
	moduleMu   = map[string]*sync.Mutex{}
)

func moduleLock(tag string) *sync.Mutex {
	moduleMuMu.Lock()
	defer moduleMuMu.Unlock()
	mu, ok := moduleMu[tag]
	if !ok {
		mu = new(sync.Mutex)
		moduleMu[tag] = mu
	}
	return mu
}

// ModuleImage returns spec.Tag, building it first unless the Docker
// engine already has it with spec.SpecLabel matching spec.Wrap: the
// binary is compiled inside its own module (ModuleBinary, so its
// dependencies stay out of wsd's go.mod and its replace directives
// hold; a few minutes on a cold Go build cache), wrapped FROM scratch as
// spec.Wrap says (FromBinary) and tagged spec.Tag. It fails when the
// engine is unreachable, the module cannot be downloaded or the build
// fails; the error carries the go command's output.
func ModuleImage(ctx context.Context, spec ModuleSpec) (string, error) {
	mu := moduleLock(spec.Tag)
	mu.Lock()
	defer mu.Unlock()
	ConfigureTestcontainers()
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return "", fmt.Errorf("%s image: docker client: %w", spec.Name, err)
	}
	defer cli.Close()
	if insp, err := cli.ImageInspect(ctx, spec.Tag); err == nil {
		if insp.Config != nil && insp.Config.Labels[spec.SpecLabel] == spec.Wrap.hash() {
			return spec.Tag, nil
		}
	} else if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("%s image: inspect %s: %w", spec.Name, spec.Tag, err)
	}
	bin, err := ModuleBinary(ctx, spec.Module, spec.Version, spec.Package)
	if err != nil {
		return "", fmt.Errorf("%s image: %w", spec.Name, err)
	}
	built, err := FromBinary(ctx, bin, spec.Name, spec.Wrap.options(spec.SpecLabel)...)
	if err != nil {
		return "", fmt.Errorf("%s image: %w", spec.Name, err)
	}
	if _, err := cli.ImageTag(ctx, client.ImageTagOptions{Source: built, Target: spec.Tag}); err != nil {
		return "", fmt.Errorf("%s image: tag %s as %s: %w", spec.Name, built, spec.Tag, err)
	}
	return spec.Tag, nil
}
