package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// serverSpec is a server under test: a binary, its arguments (with
// {listen} and {admin} placeholders) and extra environment.
type serverSpec struct {
	name  string
	bin   string
	args  []string
	env   []string
	admin bool // has wsd's admin listener (/debug/stats, /debug/pprof)
}

// runningServer is a started server process.
type runningServer struct {
	spec      serverSpec
	cmd       *exec.Cmd
	pid       int
	addr      string // public host:port
	adminAddr string
	exited    chan struct{}
	waitErr   error
}

// buildBinaries compiles wsd and the baseline into dir with the go
// command, from the module root.
func buildBinaries(ctx context.Context, root, dir string) (wsd, baseline string, err error) {
	wsd, baseline = filepath.Join(dir, "wsd"), filepath.Join(dir, "baseline")
	for _, b := range []struct{ out, pkg string }{{wsd, "./cmd/wsd"}, {baseline, "./bench/baseline"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.out, b.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return wsd, baseline, nil
}

// moduleRoot finds the directory of go.mod from the working directory.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the wsd module: run wsbench from the repository")
	}
	return filepath.Dir(mod), nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startServer starts spec, pinned to cpus (taskset -c) when not empty,
// logging to logPath, and waits until its public port accepts.
func startServer(ctx context.Context, spec serverSpec, cpus, logPath string) (*runningServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	adminAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	args := make([]string, len(spec.args))
	for i, a := range spec.args {
		args[i] = strings.NewReplacer("{listen}", addr, "{admin}", adminAddr).Replace(a)
	}
	name := spec.bin
	if cpus != "" {
		args = append([]string{"-c", cpus, spec.bin}, args...)
		name = "taskset"
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("server log: %w", err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), spec.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	rs := &runningServer{spec: spec, cmd: cmd, pid: cmd.Process.Pid, addr: addr, adminAddr: adminAddr, exited: make(chan struct{})}
	go func() { rs.waitErr = cmd.Wait(); _ = logf.Close(); close(rs.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return rs, nil
		}
		select {
		case <-rs.exited:
			return nil, fmt.Errorf("%s exited before listening (%v); see %s", spec.name, rs.waitErr, logPath)
		case <-ctx.Done():
			rs.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			rs.stop()
			return nil, fmt.Errorf("%s not listening on %s after 20s; see %s", spec.name, addr, logPath)
		}
	}
}

func (rs *runningServer) url(path string) string { return "ws://" + rs.addr + path }

// alive reports an error if the server process has exited.
func (rs *runningServer) alive() error {
	select {
	case <-rs.exited:
		return fmt.Errorf("%s exited during the run: %v", rs.spec.name, rs.waitErr)
	default:
		return nil
	}
}

// stop sends SIGTERM (wsd drains gracefully) and kills after 20s.
func (rs *runningServer) stop() {
	_ = rs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rs.exited:
	case <-time.After(20 * time.Second):
		_ = rs.cmd.Process.Kill()
		<-rs.exited
	}
}

// adminGet fetches path from wsd's admin listener.
func (rs *runningServer) adminGet(ctx context.Context, path string) ([]byte, error) {
	if !rs.spec.admin {
		return nil, fmt.Errorf("%s has no admin listener", rs.spec.name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+rs.adminAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s admin %s: %w", rs.spec.name, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s admin %s: %w", rs.spec.name, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("%s admin %s: HTTP %d", rs.spec.name, path, resp.StatusCode)
	}
	return b, nil
}

// scrape fetches /metrics every period until ctx ends, as a Prometheus
// server would, so the exporter's cost is part of wsd's figures. It
// returns the number of successful scrapes.
func (rs *runningServer) scrape(ctx context.Context, period time.Duration) int {
	n := 0
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		if _, err := rs.adminGet(ctx, "/metrics"); err == nil {
			n++
		}
		select {
		case <-ctx.Done():
			return n
		case <-t.C:
		}
	}
}

// memStats reads the goroutine stack and heap-in-use bytes from the
// runtime.MemStats footer of /debug/pprof/heap?debug=1.
func (rs *runningServer) memStats(ctx context.Context) (stack, heap int64, err error) {
	b, err := rs.adminGet(ctx, "/debug/pprof/heap?debug=1")
	if err != nil {
		return 0, 0, err
	}
	return parseMemStats(string(b))
}

func parseMemStats(doc string) (stack, heap int64, err error) {
	var gotStack, gotHeap bool
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case strings.HasPrefix(line, "# Stack = "):
			_, err = fmt.Sscanf(line, "# Stack = %d", &stack)
			gotStack = err == nil
		case strings.HasPrefix(line, "# HeapInuse = "):
			_, err = fmt.Sscanf(line, "# HeapInuse = %d", &heap)
			gotHeap = err == nil
		}
	}
	if !gotStack || !gotHeap {
		return 0, 0, errors.New("heap profile has no runtime.MemStats Stack/HeapInuse lines")
	}
	return stack, heap, nil
}
