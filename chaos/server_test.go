package chaos

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// startServer runs an in-process wsd on loopback for the injectors' own
// tests; mutate adjusts the configuration.
func startServer(t *testing.T, mutate func(*service.Config)) Target {
	t.Helper()
	cfg := service.DefaultConfig()
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Log.Level = "error"
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := service.New(cfg, service.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("server did not stop")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	admin := NewAdmin("http://" + srv.AdminAddr().String())
	t.Cleanup(admin.Close)
	return Target{WS: "ws://" + srv.Addr().String(), Admin: admin}
}
