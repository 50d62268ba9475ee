package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// otelVars are the variables the telemetry keys mirror plus those the
// tests set; each test resets them (t.Setenv restores them afterwards,
// including what applyTelemetryEnv wrote).
var otelVars = []string{
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
	"OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
	"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_METRIC_EXPORT_INTERVAL",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY",
}

func clearOTELEnv(t *testing.T) {
	for _, k := range otelVars {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// wsdProcess is run() serving in the background of the test process.
type wsdProcess struct {
	public, admin string
	stdout        *wstest.SyncBuffer
	exit          chan int
}

// startWsd runs wsd in-process with args and waits for /healthz. It is
// stopped with SIGTERM (which run's signal context catches) at cleanup.
func startWsd(t *testing.T, args ...string) *wsdProcess {
	t.Helper()
	p := &wsdProcess{public: freeAddr(t), admin: freeAddr(t), stdout: &wstest.SyncBuffer{}, exit: make(chan int, 1)}
	args = append([]string{"--listen=" + p.public, "--admin_listen=" + p.admin}, args...)
	var stderr wstest.SyncBuffer
	go func() { p.exit <- run(args, nil, p.stdout, &stderr) }()
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		select {
		case code := <-p.exit:
			p.exit <- code
			t.Fatalf("wsd exited %d: %s%s", code, stderr.String(), p.stdout.String())
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	t.Cleanup(func() {
		if code, ok := p.stop(t); !ok || code != 0 {
			t.Errorf("wsd exit %d (returned %v); stderr %s", code, ok, stderr.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits for run to return.
func (p *wsdProcess) stop(t *testing.T) (int, bool) {
	select {
	case code := <-p.exit:
		p.exit <- code
		return code, true
	default:
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-p.exit:
		p.exit <- code
		return code, true
	case <-time.After(30 * time.Second):
		return 0, false
	}
}

// echoOnce opens a session, echoes one message and closes it.
func (p *wsdProcess) echoOnce(t *testing.T) {
	t.Helper()
	conn, h := wstest.DialGWS(t, "ws://"+p.public+"/ws/echo", true)
	if err := conn.WriteString("hello"); err != nil {
		t.Fatal(err)
	}
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if h.Count() == 0 {
			return errors.New("no echo")
		}
		return nil
	})
	if msgs := h.Messages(); len(msgs) != 1 || string(msgs[0]) != "hello" {
		t.Fatalf("echoes %q, want one hello", msgs)
	}
	_ = conn.WriteClose(1000, nil)
}

// metrics returns the status and body of the admin /metrics.
func (p *wsdProcess) metrics(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// logLines parses the JSON log lines written so far.
func (p *wsdProcess) logLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(p.stdout.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// exporters returns the exporters wsd logged at startup ("" if it did
// not log them).
func (p *wsdProcess) exporters(t *testing.T) string {
	t.Helper()
	for _, rec := range p.logLines(t) {
		if rec["msg"] == "telemetry" {
			s, _ := rec["exporters"].(string)
			return s
		}
	}
	return ""
}

// TestTelemetryDefaultWiring: with no OTEL_* environment wsd serves
// Prometheus metrics on the admin /metrics, counts sessions, logs the
// exporters in use, and puts trace_id/span_id on session log lines.
func TestTelemetryDefaultWiring(t *testing.T) {
	clearOTELEnv(t)
	p := startWsd(t)
	p.echoOnce(t)
	wstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		code, body := p.metrics(t)
		if code != http.StatusOK || !strings.Contains(body, `wsd_connections_closed_total{`) ||
			!strings.Contains(body, "wsd_messages_received_total") || !strings.Contains(body, `service_name="wsd"`) {
			return fmt.Errorf("/metrics %d without the session's metrics", code)
		}
		return nil
	})
	closedWithTrace := false
	for _, rec := range p.logLines(t) {
		if rec["msg"] == "connection closed" {
			id, _ := rec["trace_id"].(string)
			closedWithTrace = len(id) == 32 && len(rec["span_id"].(string)) == 16
			if d, _ := rec["duration"].(string); d == "" {
				t.Errorf("duration %v (%T), want a Go duration string", rec["duration"], rec["duration"])
			} else if _, err := time.ParseDuration(d); err != nil {
				t.Errorf("duration %q: %v", d, err)
			}
		}
	}
	if exporters := p.exporters(t); exporters != "traces=none metrics=prometheus logs=none" {
		t.Errorf("exporters %q", exporters)
	}
	if !closedWithTrace {
		t.Errorf("no 'connection closed' line with trace_id and span_id:\n%s", p.stdout.String())
	}
}

// TestTelemetryKeysOverrideEnvironment: a telemetry.* key (here from the
// YAML file and a flag) wins over the OTEL_* variable it mirrors; an
// empty key leaves the variable in charge.
func TestTelemetryKeysOverrideEnvironment(t *testing.T) {
	clearOTELEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_METRICS_EXPORTER", "otlp")
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	cfg := writeFile(t, "telemetry:\n  metrics_exporter: none\n  service_name: from-yaml\n")
	p := startWsd(t, "--config="+cfg, "--telemetry.traces_exporter=none")
	if exporters := p.exporters(t); exporters != "traces=none metrics=none logs=none" {
		t.Errorf("exporters %q, want the keys to win over OTEL_*", exporters)
	}
	if got := os.Getenv("OTEL_SERVICE_NAME"); got != "from-yaml" {
		t.Errorf("OTEL_SERVICE_NAME = %q, want the YAML key's value", got)
	}
	if code, _ := p.metrics(t); code != http.StatusNotFound {
		t.Errorf("/metrics answered %d with metrics_exporter none, want 404", code)
	}
}

// TestTelemetryUnreachableCollector: every signal to an OTLP endpoint
// that refuses connections; wsd serves normally, logs the export errors
// rate-limited (one line, not one per failed batch), and exits cleanly.
func TestTelemetryUnreachableCollector(t *testing.T) {
	clearOTELEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_METRICS_EXPORTER", "otlp")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "20")
	p := startWsd(t, "--telemetry.batch_timeout=20ms")
	for range 5 {
		p.echoOnce(t)
	}
	// Wait until at least one failure is logged, then for more failed
	// exports (every 20 ms) to be suppressed rather than logged.
	failures := func() int { return strings.Count(p.stdout.String(), "telemetry export failed") }
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if failures() == 0 {
			return errors.New("no export failure logged")
		}
		return nil
	})
	p.echoOnce(t)
	if n := failures(); n != 1 {
		t.Errorf("%d export failure lines within the rate limit interval, want 1", n)
	}
	if code, ok := p.stop(t); !ok || code != 0 {
		t.Fatalf("wsd exit %d (returned %v)", code, ok)
	}
	if exporters := p.exporters(t); exporters != "traces=otlp metrics=otlp logs=none" {
		t.Errorf("exporters %q:\n%s", exporters, p.stdout.String())
	}
}

// TestTelemetryInvalidEnvironment: an unknown exporter in OTEL_* stops
// wsd at startup with a clear error (exit 2), before it listens.
func TestTelemetryInvalidEnvironment(t *testing.T) {
	clearOTELEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin-v0")
	code, _, errOut := runWsd(t, []string{"--listen=" + freeAddr(t), "--admin_listen=" + freeAddr(t)}, nil)
	if code != 2 || !strings.Contains(errOut, "OTEL_TRACES_EXPORTER") {
		t.Fatalf("exit %d, stderr %q: want 2 naming OTEL_TRACES_EXPORTER", code, errOut)
	}
}

// TestExportErrorsRateLimited: a burst of errors logs one line; the next
// line after the interval reports how many were suppressed.
func TestExportErrorsRateLimited(t *testing.T) {
	var buf wstest.SyncBuffer
	// The burst must fit in one interval: a second is far more than 100
	// calls take even on a loaded machine, where a descheduled goroutine
	// could overrun 50 ms.
	h := newExportErrors(slog.New(slog.NewJSONHandler(&buf, nil)), time.Second)
	for range 100 {
		h.Handle(errors.New("connection refused"))
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Fatalf("%d lines for a burst of 100 errors, want 1", n)
	}
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		h.Handle(errors.New("connection refused"))
		if strings.Count(buf.String(), "\n") < 2 {
			return errors.New("no second line")
		}
		return nil
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var rec struct {
		Suppressed int    `json:"suppressed"`
		Error      string `json:"error"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Suppressed < 99 || rec.Error != "connection refused" {
		t.Errorf("second line %s: want suppressed >= 99 and the error", lines[1])
	}
}
