package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

func startWsd(t *testing.T) (ws, admin string) {
	t.Helper()
	cfg := service.DefaultConfig()
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Heartbeat.PingInterval, cfg.Heartbeat.PongTimeout = 500*time.Millisecond, 500*time.Millisecond
	cfg.Limits.HandshakeTimeout = time.Second
	srv, err := service.New(cfg, service.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	return "ws://" + srv.Addr().String(), "http://" + srv.AdminAddr().String()
}

func TestDemoRunsRoundsAndExitsZero(t *testing.T) {
	ws, admin := startWsd(t)
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"run", "-target", ws, "-admin", admin, "-scenario", "demo",
		"-duration", "2s", "-handshake-timeout", "1s"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	s := out.String()
	for _, want := range []string{"round 1 [demo]: echo: 400/400 echoed", "topic: published 2000", "half-open: 20 silent peers opened", "abuse: ", "server: conns=", "wschaos: done"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "error:") {
		t.Errorf("a round failed:\n%s", s)
	}
}

func TestEveryScenarioRuns(t *testing.T) {
	ws, admin := startWsd(t)
	for _, sc := range []string{"slow-consumers", "flooder", "half-open", "churn", "abuse"} {
		var out, errb bytes.Buffer
		code := run(t.Context(), []string{"run", "-target", ws, "-admin", admin, "-scenario", sc, "-duration", "100ms", "-handshake-timeout", "1s"}, &out, &errb)
		if code != 0 || !strings.Contains(out.String(), "round 1 ["+sc+"]") || strings.Contains(out.String(), "error:") {
			t.Errorf("%s: exit %d\n%s%s", sc, code, out.String(), errb.String())
		}
	}
}

func TestSignalStopsPromptly(t *testing.T) {
	ws, admin := startWsd(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, []string{"run", "-target", ws, "-admin", admin, "-scenario", "demo", "-duration", "10m"}, &out, &bytes.Buffer{})
	}()
	time.AfterFunc(500*time.Millisecond, cancel)
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(out.String(), "wschaos: interrupted") {
			t.Errorf("exit %d:\n%s", code, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a 10-minute run did not stop within 30s of the signal")
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"attack"},
		{"run", "-scenario", "nope"},
		{"run", "-duration", "0s"},
		{"run", "-target", "http://x:1"},
		{"run", "-admin", "ws://x:1"},
		{"run", "extra"},
	} {
		var errb bytes.Buffer
		if code := run(t.Context(), args, &bytes.Buffer{}, &errb); code != 2 || errb.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message", args, code, errb.String())
		}
	}
}

func TestUnreachableTargetExitsOne(t *testing.T) {
	var errb bytes.Buffer
	code := run(t.Context(), []string{"run", "-target", "ws://127.0.0.1:1", "-admin", "http://127.0.0.1:1", "-duration", "1s"}, &bytes.Buffer{}, &errb)
	if code != 1 || !strings.Contains(errb.String(), "admin not reachable") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}
