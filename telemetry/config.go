package telemetry

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Config is the telemetry section of the wsd configuration. The zero
// value is not valid (BatchTimeout must be set): start from
// DefaultConfig.
//
// The string fields mirror standard OpenTelemetry environment variables
// (named in each comment) so that they can be written in the YAML file:
// an empty field means "use the process environment", a non-empty one
// overrides it (see EnvOverrides). Everything else about the exporters
// (headers, per-signal endpoints, timeouts, OTEL_BSP_*, ...) is read from
// the standard environment by the OpenTelemetry SDK itself.
type Config struct {
	// ServiceName is OTEL_SERVICE_NAME; the default service.name is "wsd".
	ServiceName string `koanf:"service_name"`
	// ResourceAttributes is OTEL_RESOURCE_ATTRIBUTES (k=v,k=v).
	ResourceAttributes string `koanf:"resource_attributes"`
	// TracesExporter is OTEL_TRACES_EXPORTER: otlp, console or none.
	// Unset, traces go over OTLP when an OTLP endpoint is configured and
	// are off otherwise.
	TracesExporter string `koanf:"traces_exporter"`
	// MetricsExporter is OTEL_METRICS_EXPORTER: prometheus (served on the
	// admin listener at /metrics; the default), otlp, console or none.
	MetricsExporter string `koanf:"metrics_exporter"`
	// LogsExporter is OTEL_LOGS_EXPORTER: otlp or console sends every log
	// line through the OpenTelemetry logs bridge too; none (the default)
	// does not.
	LogsExporter string `koanf:"logs_exporter"`
	// OTLPEndpoint is OTEL_EXPORTER_OTLP_ENDPOINT, e.g.
	// http://collector:4318.
	OTLPEndpoint string `koanf:"otlp_endpoint"`
	// OTLPProtocol is OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf (the
	// default) or grpc.
	OTLPProtocol string `koanf:"otlp_protocol"`
	// TracesSampler is OTEL_TRACES_SAMPLER (default
	// parentbased_always_on).
	TracesSampler string `koanf:"traces_sampler"`
	// TracesSamplerArg is OTEL_TRACES_SAMPLER_ARG, e.g. the ratio 0.1.
	TracesSamplerArg string `koanf:"traces_sampler_arg"`

	// BatchTimeout is the longest a finished span waits before export
	// (the batch span processor's schedule delay). It is short so that a
	// session's span shows up in the tracing backend within seconds;
	// OTEL_BSP_SCHEDULE_DELAY, when set, takes precedence.
	BatchTimeout time.Duration `koanf:"batch_timeout"`
	// MessageSpans is the switch for per-message spans, for debugging:
	// the fraction of data messages (0 to 1) that get a short span, a
	// child of the session span. 0, the default, is off: a span per
	// message is costly. The tracer's sampler applies on top: a message
	// span is recorded only in a sampled session.
	MessageSpans float64 `koanf:"message_spans"`
	// RecordUserID puts the token's sub (auth.mode jwt) on the session
	// span as enduser.id. Off by default: a user id can be personal
	// data, and traces often leave the operator's hands.
	RecordUserID bool `koanf:"record_user_id"`
}

// DefaultConfig returns the built-in defaults: everything from the
// standard environment, 1 s batch delay, message spans off.
func DefaultConfig() Config {
	return Config{BatchTimeout: time.Second}
}

// envFields pairs each mirrored field with its variable and valid values
// (nil: any value).
func (c Config) envFields() []struct {
	key, env, value string
	valid           []string
} {
	return []struct {
		key, env, value string
		valid           []string
	}{
		{"service_name", envServiceName, c.ServiceName, nil},
		{"resource_attributes", "OTEL_RESOURCE_ATTRIBUTES", c.ResourceAttributes, nil},
		{"traces_exporter", envTracesExporter, c.TracesExporter, []string{"otlp", "console", "none"}},
		{"metrics_exporter", envMetricsExporter, c.MetricsExporter, []string{"prometheus", "otlp", "console", "none"}},
		{"logs_exporter", envLogsExporter, c.LogsExporter, []string{"otlp", "console", "none"}},
		{"otlp_endpoint", envOTLPEndpoint, c.OTLPEndpoint, nil},
		{"otlp_protocol", "OTEL_EXPORTER_OTLP_PROTOCOL", c.OTLPProtocol, []string{"http/protobuf", "grpc"}},
		{"traces_sampler", "OTEL_TRACES_SAMPLER", c.TracesSampler, []string{
			"always_on", "always_off", "traceidratio",
			"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
		}},
		{"traces_sampler_arg", "OTEL_TRACES_SAMPLER_ARG", c.TracesSamplerArg, nil},
	}
}

// EnvOverrides returns the OpenTelemetry environment variables that the
// non-empty mirrored fields stand for. The wsd binary sets them in its
// environment before calling New, so that the SDK and autoexport, which
// read the environment, see them; a library user can do the same or
// leave the fields empty.
func (c Config) EnvOverrides() map[string]string {
	out := map[string]string{}
	for _, f := range c.envFields() {
		if f.value != "" {
			out[f.env] = f.value
		}
	}
	return out
}

// Validate reports every invalid setting: it returns nil for a valid
// configuration, otherwise one error per bad setting (joined with
// errors.Join), each naming its key relative to the telemetry section.
func (c Config) Validate() error {
	var errs []error
	for _, f := range c.envFields() {
		if f.value == "" || f.valid == nil {
			continue
		}
		if !contains(f.valid, f.value) {
			errs = append(errs, fmt.Errorf("%s: must be one of %v, got %q", f.key, f.valid, f.value))
		}
	}
	if c.TracesSamplerArg != "" {
		if _, err := strconv.ParseFloat(c.TracesSamplerArg, 64); err != nil {
			errs = append(errs, fmt.Errorf("traces_sampler_arg: must be a number, got %q", c.TracesSamplerArg))
		}
	}
	if c.BatchTimeout <= 0 {
		errs = append(errs, fmt.Errorf("batch_timeout: must be a positive duration, got %s", c.BatchTimeout))
	}
	if c.MessageSpans < 0 || c.MessageSpans > 1 {
		errs = append(errs, fmt.Errorf("message_spans: must be in [0, 1] (0: off), got %g", c.MessageSpans))
	}
	return errors.Join(errs...)
}

func contains(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}
