package telemetry

import (
	"strings"
	"testing"
	"time"
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
