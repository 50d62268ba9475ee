// Package images builds the container images the chaos suite runs, from
// this repository's code only: no registry is contacted. A Go program is
// compiled on the host as a static binary (CGO_ENABLED=0) and wrapped in
// a FROM scratch image tagged by the SHA-256 of everything that goes into
// it, so a second run finds the tag and builds nothing.
//
//	img, err := images.Wsd(ctx)                        // wsd-e2e/wsd:<hash>
//	img, err := images.Toxiproxy(ctx)                  // wsd-e2e/toxiproxy:<hash>
//	bin, err := images.GoBinary(ctx, "./cmd/foo")      // any main package
//	img, err := images.FromBinary(ctx, bin, "foo",
//		images.WithEnv("K", "v"), images.WithExpose("1234/tcp"))
//
// Every function talks to the Docker engine named by DOCKER_HOST (or the
// local socket) through the Docker API; it needs no docker CLI.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// Prefix is the repository prefix of every image this package builds.
const Prefix = "wsd-e2e/"

// ToxiproxyPackage is the toxiproxy server's main package; its version is
// the one in this module's go.mod.
const ToxiproxyPackage = "github.com/Shopify/toxiproxy/v2/cmd/server"

// Option customises the image FromBinary builds.
type Option func(*spec)

type spec struct {
	env    [][2]string
	expose []string
	user   string
	cmd    []string
	entry  string
	extra  []string
}

// WithEnv adds an ENV line to the image.
func WithEnv(key, value string) Option {
	return func(s *spec) { s.env = append(s.env, [2]string{key, value}) }
}

// WithExpose adds EXPOSE lines ("8080/tcp", "6831/udp", "9090").
func WithExpose(ports ...string) Option {
	return func(s *spec) { s.expose = append(s.expose, ports...) }
}

// WithUser sets the USER line (default "65534:65534", nobody: a scratch
// image has no /etc/passwd, so numeric ids are used).
func WithUser(user string) Option { return func(s *spec) { s.user = user } }

// WithCmd sets the default arguments (CMD) passed to the binary.
func WithCmd(args ...string) Option { return func(s *spec) { s.cmd = args } }

// WithDockerfileLines appends raw Dockerfile lines (e.g. HEALTHCHECK,
// LABEL). They take part in the content hash.
func WithDockerfileLines(lines ...string) Option {
	return func(s *spec) { s.extra = append(s.extra, lines...) }
}

// builds deduplicates concurrent builds of the same tag in one process.
var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

type build struct {
	done chan struct{}
	err  error
}

// FromBinary wraps the static binary at binPath in a FROM scratch image
// named wsd-e2e/<name>:<hash>, where hash covers the binary and the
// generated Dockerfile. The binary is installed as /<base name of
// binPath> and is the entrypoint. If the tag exists it returns at once.
// It fails when binPath cannot be read, name is not a valid repository
// component, or the engine is unreachable or refuses the build.
func FromBinary(ctx context.Context, binPath, name string, opts ...Option) (string, error) {
	ConfigureTestcontainers()
	if name == "" || strings.ContainsAny(name, ": \t") || strings.ToLower(name) != name {
		return "", fmt.Errorf("images: invalid image name %q (lower case, no tag)", name)
	}
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return "", fmt.Errorf("images: read binary: %w", err)
	}
	s := spec{user: "65534:65534", entry: filepath.Base(binPath)}
	for _, o := range opts {
		o(&s)
	}
	df := s.dockerfile()
	files := map[string][]byte{"Dockerfile": []byte(df), "bin/" + s.entry: bin}
	return buildImage(ctx, name, files, "", 0o755)
}

// dockerfile renders the generated Dockerfile.
func (s *spec) dockerfile() string {
	var b strings.Builder
	b.WriteString("FROM scratch\n")
	fmt.Fprintf(&b, "COPY bin/%s /%s\n", s.entry, s.entry)
	for _, kv := range s.env {
		v, _ := json.Marshal(kv[1])
		fmt.Fprintf(&b, "ENV %s=%s\n", kv[0], v)
	}
	for _, p := range s.expose {
		fmt.Fprintf(&b, "EXPOSE %s\n", p)
	}
	if s.user != "" {
		fmt.Fprintf(&b, "USER %s\n", s.user)
	}
	for _, l := range s.extra {
		b.WriteString(l + "\n")
	}
	fmt.Fprintf(&b, "ENTRYPOINT [\"/%s\"]\n", s.entry)
	if len(s.cmd) > 0 {
		c, _ := json.Marshal(s.cmd)
		fmt.Fprintf(&b, "CMD %s\n", c)
	}
	return b.String()
}

// Wsd compiles ./cmd/wsd and builds the repository Dockerfile's prebuilt
// stage (FROM scratch + bin/wsd) around it, so the suite runs the same
// image layout that ships: wsd-e2e/wsd:<hash of binary and Dockerfile>.
func Wsd(ctx context.Context) (string, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin, err := GoBinary(ctx, "./cmd/wsd")
	if err != nil {
		return "", err
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		return "", fmt.Errorf("images: read the repository Dockerfile: %w", err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("images: read binary: %w", err)
	}
	files := map[string][]byte{"Dockerfile": df, "bin/wsd": data}
	return buildImage(ctx, "wsd", files, "prebuilt", 0o755)
}

// Toxiproxy compiles the toxiproxy server at the version pinned in
// go.mod and wraps it: wsd-e2e/toxiproxy:<hash>. Its API listens on 8474.
func Toxiproxy(ctx context.Context) (string, error) {
	bin, err := GoBinary(ctx, ToxiproxyPackage)
	if err != nil {
		return "", err
	}
	return FromBinary(ctx, bin, "toxiproxy",
		WithExpose("8474/tcp"), WithCmd("-host=0.0.0.0", "-port=8474"))
}

// GoBinary compiles the main package pkg (a path relative to the module
// root such as "./cmd/wsd", or an import path of a dependency in go.mod)
// for linux/GOARCH with CGO_ENABLED=0, -trimpath and stripped symbols, so
// the output is static and reproducible. It returns the binary's path in
// the user cache directory. The go command's build cache makes a second
// call cheap. It fails when the go tool is missing or the build fails (the
// error carries the compiler output).
func GoBinary(ctx context.Context, pkg string) (string, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	// The directory is per package, so two "server" packages never
	// share a file; the binary keeps its package's base name.
	name := filepath.Base(strings.TrimSuffix(pkg, "/"))
	sum := sha256.Sum256([]byte(root + "\x00" + pkg))
	dir := filepath.Join(cache, "wsd-e2e", hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("images: create binary cache dir: %w", err)
	}
	out := filepath.Join(dir, sanitize(name))
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("images: go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

func sanitize(s string) string {
	s = strings.ToLower(s)
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '-'
	}, s)
}

// goTool returns the go command: $GOROOT/bin/go when GOROOT is set (the
// toolchain running the tests), else "go" from PATH.
func goTool() string {
	if r := os.Getenv("GOROOT"); r != "" {
		if p := filepath.Join(r, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// ModuleRoot returns the directory of this module's go.mod, found with
// `go env GOMOD` from the working directory (tests run inside the
// module), or from $WSD_MODULE_ROOT when set.
func ModuleRoot(ctx context.Context) (string, error) {
	rootOnce.Do(func() {
		if d := os.Getenv("WSD_MODULE_ROOT"); d != "" {
			rootDir = d
			return
		}
		out, err := exec.CommandContext(ctx, goTool(), "env", "GOMOD").Output()
		gomod := strings.TrimSpace(string(out))
		if err != nil || gomod == "" || gomod == os.DevNull {
			rootErr = fmt.Errorf("images: not inside the wsd module (go env GOMOD=%q, err=%v): run from the repository or set WSD_MODULE_ROOT", gomod, err)
			return
		}
		rootDir = filepath.Dir(gomod)
	})
	return rootDir, rootErr
}

// buildImage builds files (a build context) as wsd-e2e/<name>:<hash>
// unless that tag exists. target selects a Dockerfile stage ("" = last).
func buildImage(ctx context.Context, name string, files map[string][]byte, target string, binMode int64) (string, error) {
	tag := Prefix + name + ":" + contentHash(files, target)

	buildsMu.Lock()
	b, ok := builds[tag]
	if !ok {
		b = &build{done: make(chan struct{})}
		builds[tag] = b
	}
	buildsMu.Unlock()
	if ok {
		select {
		case <-b.done:
			return tag, b.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	b.err = ensure(ctx, tag, files, target, binMode)
	close(b.done)
	// The map only joins builds in flight: a later call asks the engine
	// again, so an image removed meanwhile (a test's cleanup, a prune) is
	// rebuilt, and a failed build is retried.
	buildsMu.Lock()
	delete(builds, tag)
	buildsMu.Unlock()
	return tag, b.err
}

func ensure(ctx context.Context, tag string, files map[string][]byte, target string, binMode int64) error {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return fmt.Errorf("images: docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(ctx, tag); err == nil {
		return nil // cached
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("images: inspect %s: %w", tag, err)
	}
	tarball, err := tarContext(files, binMode)
	if err != nil {
		return err
	}
	res, err := cli.ImageBuild(ctx, tarball, client.ImageBuildOptions{
		Tags:        []string{tag},
		Target:      target,
		Remove:      true,
		ForceRemove: true,
		Dockerfile:  "Dockerfile",
		Labels:      map[string]string{"org.wsd.e2e": "true"},
	})
	if err != nil {
		return fmt.Errorf("images: build %s: %w", tag, err)
	}
	defer res.Body.Close()
	if err := readBuildStream(res.Body); err != nil {
		return fmt.Errorf("images: build %s: %w", tag, err)
	}
	if _, err := cli.ImageInspect(ctx, tag); err != nil {
		return fmt.Errorf("images: build %s finished but the tag is missing: %w", tag, err)
	}
	return nil
}

// readBuildStream drains the engine's JSON progress stream and returns
// the first error it reports (a build error arrives as a message, not as
// an HTTP status).
func readBuildStream(r io.Reader) error {
	dec := json.NewDecoder(r)
	var log bytes.Buffer
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read build output: %w", err)
		}
		log.WriteString(m.Stream)
		if m.Error != "" {
			return fmt.Errorf("%s\n%s", m.Error, log.String())
		}
	}
}

// contentHash is the first 16 hex digits of the SHA-256 over the sorted
// file names and contents and the build target.
func contentHash(files map[string][]byte, target string) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	fmt.Fprintf(h, "target=%s\x00", target)
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(files[n]))
		h.Write(files[n])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// tarContext packs files into an in-memory tar; files under bin/ get
// binMode, others 0644.
func tarContext(files map[string][]byte, binMode int64) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		mode := int64(0o644)
		if strings.HasPrefix(n, "bin/") {
			mode = binMode
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(files[n]))}); err != nil {
			return nil, fmt.Errorf("images: tar %s: %w", n, err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			return nil, fmt.Errorf("images: tar %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("images: tar: %w", err)
	}
	return &buf, nil
}
