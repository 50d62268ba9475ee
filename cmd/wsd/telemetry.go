package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"golang.org/x/time/rate"

	"github.com/wsd-dev/wsd/telemetry"
)

// exportErrorInterval is the least time between two logged export
// errors: a collector that is down fails every batch, and the log must
// not become a flood.
const exportErrorInterval = 10 * time.Second

// exportErrors is wsd's OpenTelemetry error handler: it logs export
// errors at most once per interval, with the number of errors it
// suppressed since the last line. It is set with otel.SetErrorHandler by
// the binary only (a library must not set globals).
type exportErrors struct {
	log        *slog.Logger
	limit      *rate.Limiter
	mu         sync.Mutex
	suppressed int
}

func newExportErrors(log *slog.Logger, interval time.Duration) *exportErrors {
	return &exportErrors{log: log, limit: rate.NewLimiter(rate.Every(interval), 1)}
}

// Handle implements otel.ErrorHandler.
func (h *exportErrors) Handle(err error) {
	h.mu.Lock()
	if !h.limit.Allow() {
		h.suppressed++
		h.mu.Unlock()
		return
	}
	n := h.suppressed
	h.suppressed = 0
	h.mu.Unlock()
	h.log.LogAttrs(context.Background(), slog.LevelWarn, "telemetry export failed",
		slog.String("error", err.Error()), slog.Int("suppressed", n))
}

// applyTelemetryEnv writes the non-empty telemetry.* keys into the
// process environment as the OTEL_* variables they mirror, so that
// autoexport and the SDK, which read the environment, see them: a
// configured key overrides the variable.
func applyTelemetryEnv(c telemetry.Config) error {
	for k, v := range c.EnvOverrides() {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// version is the service.version resource attribute: the module version
// of a released build, else the VCS revision, else "devel".
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "devel"
}

// setupTelemetry builds the providers from the configuration and the
// environment. Errors while building are returned; export errors later
// go to the handler installed by installErrorHandler.
func setupTelemetry(c telemetry.Config) (*telemetry.Telemetry, error) {
	if err := applyTelemetryEnv(c); err != nil {
		return nil, err
	}
	return telemetry.New(context.Background(), c, telemetry.WithServiceVersion(version()))
}

// installErrorHandler routes OpenTelemetry's asynchronous errors (failed
// exports, dropped data) to log, rate-limited.
func installErrorHandler(log *slog.Logger) {
	otel.SetErrorHandler(newExportErrors(log, exportErrorInterval))
}
