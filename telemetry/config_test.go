package telemetry

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// TestConfigValidate: every invalid key is reported by name.
func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	c := DefaultConfig()
	c.TracesExporter, c.MetricsExporter, c.LogsExporter = "jaeger", "statsd", "file"
	c.OTLPProtocol, c.TracesSampler, c.TracesSamplerArg = "http/json", "sometimes", "half"
	c.BatchTimeout, c.MessageSpans = -time.Second, 1.5
	err := c.Validate()
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	for _, key := range []string{"traces_exporter", "metrics_exporter", "logs_exporter", "otlp_protocol",
		"traces_sampler:", "traces_sampler_arg", "batch_timeout", "message_spans"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}

// TestEnvOverrides: non-empty mirrored keys become their OTEL_* variable,
// empty ones leave the environment alone.
func TestEnvOverrides(t *testing.T) {
	c := DefaultConfig()
	c.ServiceName, c.OTLPEndpoint, c.TracesSampler = "edge", "http://collector:4318", "parentbased_traceidratio"
	got := c.EnvOverrides()
	want := map[string]string{
		"OTEL_SERVICE_NAME":           "edge",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
		"OTEL_TRACES_SAMPLER":         "parentbased_traceidratio",
	}
	if len(got) != len(want) {
		t.Fatalf("overrides %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// TestSDKDisabled: OTEL_SDK_DISABLED=true makes every signal a no-op
// whatever the exporters say: no /metrics handler, nothing recorded.
func TestSDKDisabled(t *testing.T) {
	t.Setenv(envSDKDisabled, "true")
	t.Setenv(envOTLPEndpoint, "http://127.0.0.1:1")
	t.Setenv(envLogsExporter, "otlp")
	tel, err := New(context.Background(), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tel.String() != "traces=disabled metrics=disabled logs=disabled" || tel.MetricsHandler() != nil {
		t.Fatalf("exporters %s, handler %v", tel, tel.MetricsHandler())
	}
	_, so := tel.SessionOpened(context.Background(), service.SessionInfo{Endpoint: service.EndpointEcho})
	so.MessageReceived(1)
	so.Closed(service.CloseInfo{Code: 1000, Initiator: service.InitiatorClient})
}
