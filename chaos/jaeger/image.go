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
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

	bin, err := buildBinary(ctx)
	if err != nil {
		return "", err
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

// buildBinary compiles Module@Version's ./cmd/jaeger as a static binary
// and returns its path in the user cache directory.
//
// It must be built inside Jaeger's own module: its go.mod has a replace
// directive, which `go build module@version` and a require from this
// module would both ignore. The module cache is read-only, so the source
// is copied to a temporary directory first. -trimpath keeps the build
// cache keys independent of that directory, so a rebuild after the image
// was deleted reuses the compiled packages.
func buildBinary(ctx context.Context) (string, error) {
	gocmd := goTool()
	out, err := goOutput(ctx, "", gocmd, "mod", "download", "-json", Module+"@v"+Version)
	if err != nil {
		return "", fmt.Errorf("jaeger image: download %s@v%s: %w", Module, Version, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", fmt.Errorf("jaeger image: parse go mod download output: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return "", fmt.Errorf("jaeger image: download %s@v%s: %s", Module, Version, mod.Error)
	}

	src, err := os.MkdirTemp("", "wsd-jaeger-src-")
	if err != nil {
		return "", fmt.Errorf("jaeger image: %w", err)
	}
	defer os.RemoveAll(src)
	// os.CopyFS creates files writable by the owner (the cache's are not).
	if err := os.CopyFS(filepath.Join(src, "jaeger"), os.DirFS(mod.Dir)); err != nil {
		return "", fmt.Errorf("jaeger image: copy module source: %w", err)
	}

	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "wsd-e2e", "jaeger-"+Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("jaeger image: create binary dir: %w", err)
	}
	bin := filepath.Join(dir, "jaeger")
	if _, err := goOutput(ctx, filepath.Join(src, "jaeger"), gocmd,
		"build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/jaeger"); err != nil {
		return "", fmt.Errorf("jaeger image: go build ./cmd/jaeger: %w", err)
	}
	return bin, nil
}

// goOutput runs the go command in dir with a static-build environment
// that ignores any go.work and never switches toolchains, and returns its
// standard output; on failure the error carries its standard error.
func goOutput(ctx context.Context, dir, gocmd string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, gocmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off", "GOTOOLCHAIN=local")
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, stderr.String())
	}
	return out, nil
}

// goTool returns $GOROOT/bin/go when GOROOT is set (the toolchain running
// the tests), else go from PATH.
func goTool() string {
	if r := os.Getenv("GOROOT"); r != "" {
		p := filepath.Join(r, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// limitedBuffer keeps the last 16 KiB written to it: enough for the
// compiler errors, bounded for a runaway command.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.b = append(l.b, p...)
	if over := len(l.b) - 16<<10; over > 0 {
		l.b = l.b[over:]
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
