package telemetry

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/wsd-dev/wsd/service"
)

// readmeMetricNames returns the Prometheus names (second column) of the
// metric table in the README's telemetry section.
func readmeMetricNames(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Telemetry\n")
	if !ok {
		t.Fatal("README has no telemetry section")
	}
	section, _, _ = strings.Cut(section, "\n## ") // up to the next section
	row := regexp.MustCompile("^\\| `([a-z0-9_.]+)` \\| `([a-z0-9_]+)` \\|")
	var names []string
	sc := bufio.NewScanner(strings.NewReader(section))
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			names = append(names, m[2])
		}
	}
	if len(names) < 15 {
		t.Fatalf("found %d metric rows in the README table, want the whole table", len(names))
	}
	return names
}

// TestPrometheusServesReadmeNames: with no OTEL_* environment the
// metrics are served on the admin /metrics in Prometheus format, and the
// families there are exactly the README table (for wsd_ and process_
// names). Cheap instruments are driven by a real session; the rare
// protections are reported through the observer directly — this test is
// about naming, the other tests drive them over sockets.
func TestPrometheusServesReadmeNames(t *testing.T) {
	for _, k := range []string{envTracesExporter, envMetricsExporter, envLogsExporter, envOTLPEndpoint, envOTLPTraces} {
		t.Setenv(k, "")
	}
	f := start(t, fixtureOpts{opts: []Option{}})
	if f.tel.MetricsHandler() == nil || f.tel.String() != "traces=none metrics=prometheus logs=none" {
		t.Fatalf("default exporters: %s, handler %v", f.tel, f.tel.MetricsHandler())
	}
	// depthSampleEvery echoes: one sampled send-buffer depth.
	if err := echoSession(f.wsURL("/ws/echo"), nil, []byte("x"), depthSampleEvery, nil); err != nil {
		t.Fatal(err)
	}
	f.waitIdle(t)
	_, so := f.tel.SessionOpened(context.Background(), service.SessionInfo{Endpoint: service.EndpointTopic})
	so.Backpressure(service.BackpressurePause, 1)
	so.Dropped(1)
	so.SlowConsumer(1)
	so.HeartbeatTimeout()
	so.Closed(service.CloseInfo{Code: 1013, CodeLabel: "1013", Initiator: service.InitiatorServer})
	f.tel.AcceptError("emfile")
	f.tel.UpgradeRejected(context.Background(), nil, service.RejectRate)

	resp, err := http.Get(f.adminURL("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s %v", resp.Status, err)
	}
	served := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			served[strings.Fields(rest)[0]] = true
		}
	}
	documented := map[string]bool{}
	for _, name := range readmeMetricNames(t) {
		documented[name] = true
		if !served[name] {
			t.Errorf("README metric %s is not served on /metrics", name)
		}
	}
	for name := range served {
		if (strings.HasPrefix(name, "wsd_") || strings.HasPrefix(name, "process_")) && !documented[name] {
			t.Errorf("/metrics serves %s, missing from the README table", name)
		}
	}
	if !served["go_goroutine_count"] || !strings.Contains(string(body), `service_name="wsd"`) {
		t.Errorf("runtime metrics or target_info{service_name=\"wsd\"} missing")
	}
	// Attribute values are bounded: no client address in any label.
	if strings.Contains(string(body), "127.0.0.1") {
		t.Errorf("/metrics carries a client address")
	}
}
