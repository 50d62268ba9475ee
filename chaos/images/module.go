package images

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModuleBinary compiles the main package pkg ("." or "./cmd/jaeger") of
// the Go module mod at version (without the leading v) as a static
// binary (CGO_ENABLED=0, -trimpath, stripped), inside that module's own
// go.mod, and returns its path in the user cache directory. The binary
// is named after pkg's last element ("." takes the module's last
// non-version element: nats-server for github.com/nats-io/nats-server/v2).
//
// Building inside the dependency's module keeps its requirements out of
// wsd's go.mod and honours its replace directives, which `go install
// mod@version` and a require from this module would both ignore. The
// module cache is read-only, so the source is copied to a temporary
// directory first; -trimpath keeps the build cache keys independent of
// that directory, so a rebuild reuses the compiled packages. The module
// comes from the Go module proxy. It fails when the module cannot be
// downloaded or the build fails; the error carries the go command's
// standard error.
func ModuleBinary(ctx context.Context, mod, version, pkg string) (string, error) {
	gocmd := goTool()
	out, err := goOutput(ctx, "", gocmd, "mod", "download", "-json", mod+"@v"+version)
	if err != nil {
		return "", fmt.Errorf("images: download %s@v%s: %w", mod, version, err)
	}
	var dl struct{ Dir, Error string }
	if err := json.Unmarshal(out, &dl); err != nil {
		return "", fmt.Errorf("images: parse go mod download output: %w", err)
	}
	if dl.Error != "" || dl.Dir == "" {
		return "", fmt.Errorf("images: download %s@v%s: %s", mod, version, dl.Error)
	}
	name := binaryName(mod, pkg)

	src, err := os.MkdirTemp("", "wsd-module-src-")
	if err != nil {
		return "", fmt.Errorf("images: %w", err)
	}
	defer os.RemoveAll(src)
	// os.CopyFS creates files writable by the owner (the cache's are not).
	srcDir := filepath.Join(src, name)
	if err := os.CopyFS(srcDir, os.DirFS(dl.Dir)); err != nil {
		return "", fmt.Errorf("images: copy %s source: %w", mod, err)
	}

	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "wsd-e2e", sanitize(name)+"-"+version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("images: create binary dir: %w", err)
	}
	bin := filepath.Join(dir, name)
	if _, err := goOutput(ctx, srcDir, gocmd, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg); err != nil {
		return "", fmt.Errorf("images: go build %s in %s@v%s: %w", pkg, mod, version, err)
	}
	return bin, nil
}

// binaryName is the base name go build would give pkg of module mod.
func binaryName(mod, pkg string) string {
	p := strings.Trim(pkg, "./")
	if p == "" {
		p = mod
	}
	parts := strings.Split(p, "/")
	last := parts[len(parts)-1]
	// A major-version suffix (/v2) is not the command's name.
	if len(parts) > 1 && len(last) > 1 && last[0] == 'v' && strings.Trim(last[1:], "0123456789") == "" {
		last = parts[len(parts)-2]
	}
	return last
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
