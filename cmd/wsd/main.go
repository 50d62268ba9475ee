// Command wsd runs the wsd WebSocket service.
//
//	wsd [--config file.yaml] [--section.key=value ...]
//	wsd --help | --print-config
//	wsd healthcheck [--url http://127.0.0.1:9090/healthz]
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wsd-dev/wsd/natsbus"
	"github.com/wsd-dev/wsd/service"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(args[1:], stderr)
	}
	cfg, act, fs, err := loadConfig(args, environ, stderr)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 2
	case act == actionHelp:
		fmt.Fprintf(stdout, "Usage: wsd [flags]\n\nEvery key can also be set in the YAML file (--config) or as WSD_SECTION__KEY.\n\n%s", fs.FlagUsages())
		return 0
	case act == actionPrintConfig:
		if err := printConfig(stdout, cfg); err != nil {
			fmt.Fprintf(stderr, "wsd: %v\n", err)
			return 1
		}
		return 0
	}

	tel, err := setupTelemetry(cfg.Telemetry)
	if err != nil {
		fmt.Fprintf(stderr, "wsd: telemetry: %v\n", err)
		return 2
	}
	logger := slog.New(tel.LogHandler(newLogHandler(cfg.Log, stdout)))
	installErrorHandler(logger)
	defer func() {
		// Flush spans, metrics and log records; bounded, so an
		// unreachable collector cannot hold the exit.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			logger.Warn("telemetry shutdown", "error", err)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	opts := []service.Option{service.WithLogger(logger), service.WithObserver(tel)}
	if h := tel.MetricsHandler(); h != nil {
		opts = append(opts, service.WithAdminHandler("/metrics", h))
	}
	if cfg.Bus.Kind == busNATS {
		bus, err := natsbus.New(cfg.Bus.NATS, natsbus.WithLogger(logger),
			natsbus.WithTracerProvider(tel.TracerProvider()), natsbus.WithMeterProvider(tel.MeterProvider()))
		if err != nil {
			fmt.Fprintf(stderr, "wsd: bus.nats: %v\n", err)
			return 2
		}
		// Deferred after the telemetry's shutdown, so it runs before it:
		// Serve has returned (every session unsubscribed), the queued
		// publishes are flushed and the last counts exported.
		defer func() {
			if err := bus.Close(); err != nil {
				logger.Warn("bus close", "error", err)
			}
		}()
		opts = append(opts, service.WithBus(bus))
	}
	srv, err := service.New(cfg.Config, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 2
	}
	if err := tel.Watch(srv); err != nil {
		fmt.Fprintf(stderr, "wsd: telemetry: %v\n", err)
		return 1
	}
	logger.Info("telemetry", "exporters", tel.String())
	if err := srv.Serve(ctx); err != nil {
		logger.Error("wsd stopped", "error", err)
		return 1
	}
	return 0
}

func newLogHandler(c service.LogConfig, w io.Writer) slog.Handler {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(c.Level)))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.NewTextHandler(w, opts)
	}
	opts.ReplaceAttr = durationString
	return slog.NewJSONHandler(w, opts)
}

// durationString writes durations in JSON logs as Go durations ("1.5s",
// as in the configuration and the text format) instead of slog's integer
// nanoseconds, which an operator reading a close line cannot tell apart
// from a byte count.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// healthcheck probes the admin /healthz endpoint: an image built FROM
// scratch has no curl, so Docker's HEALTHCHECK runs `wsd healthcheck`.
func healthcheck(args []string, stderr io.Writer) int {
	url := "http://127.0.0.1:9090/healthz"
	for i := 0; i < len(args); i++ {
		switch {
		case strings.HasPrefix(args[i], "--url="):
			url = strings.TrimPrefix(args[i], "--url=")
		case args[i] == "--url" && i+1 < len(args):
			i++
			url = args[i]
		default:
			fmt.Fprintf(stderr, "wsd healthcheck: unknown argument %q\n", args[i])
			return 2
		}
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "wsd healthcheck: %v\n", err)
		return 1
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "wsd healthcheck: %s answered %s\n", url, resp.Status)
		return 1
	}
	return 0
}
