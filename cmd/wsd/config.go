package main

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"

	"github.com/wsd-dev/wsd/natsbus"
	"github.com/wsd-dev/wsd/service"
	"github.com/wsd-dev/wsd/telemetry"
)

// appConfig is everything the wsd binary reads, in layers: built-in
// defaults → YAML file (--config) → environment (WSD_ prefix, "__"
// between levels) → flags (--section.key=value).
type appConfig struct {
	service.Config
	// Telemetry is the "telemetry" section: OpenTelemetry settings.
	Telemetry telemetry.Config
	// Bus is the "bus" section: how topics are shared between replicas.
	Bus busConfig
}

// Bus kinds (busConfig.Kind).
const (
	// busLocal is the in-process service.Hub: topics stay within one
	// replica.
	busLocal = "local"
	// busNATS shares topics with every replica on the same NATS servers
	// (natsbus).
	busNATS = "nats"
)

// busConfig is the "bus" section.
type busConfig struct {
	// Kind is local (default: in-process, one replica) or nats.
	Kind string `koanf:"kind"`
	// NATS is the bus.nats section, used when Kind is nats.
	NATS natsbus.Config `koanf:"nats"`
}

func defaultAppConfig() appConfig {
	return appConfig{
		Config:    service.DefaultConfig(),
		Telemetry: telemetry.DefaultConfig(),
		Bus:       busConfig{Kind: busLocal, NATS: natsbus.DefaultConfig()},
	}
}

// Validate reports every invalid setting of every section, each error
// naming its full key.
func (c appConfig) Validate() error {
	errs := []error{c.Config.Validate()}
	if err := c.Telemetry.Validate(); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("telemetry.%w", e))
		}
	}
	if c.Bus.Kind != busLocal && c.Bus.Kind != busNATS {
		errs = append(errs, fmt.Errorf("bus.kind: must be %q or %q, got %q", busLocal, busNATS, c.Bus.Kind))
	}
	// bus.nats is checked whatever the kind, so that a bad value fails
	// now rather than on the day the kind changes.
	if err := c.Bus.NATS.Validate(); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("bus.nats.%w", e))
		}
	}
	return errors.Join(errs...)
}

// unjoin splits an errors.Join result into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// sections lists the parts of appConfig with their key prefix ("" for the
// root): each is loaded from its defaults and decoded on its own.
func (c *appConfig) sections() []struct {
	prefix string
	ptr    any
} {
	return []struct {
		prefix string
		ptr    any
	}{{"", &c.Config}, {"telemetry", &c.Telemetry}, {"bus", &c.Bus}}
}

// envPrefix and envLevel make WSD_BACKPRESSURE__PAUSE_BYTES address
// backpressure.pause_bytes.
const (
	envPrefix = "WSD_"
	envLevel  = "__"
)

// action is what the command line asks for besides serving.
type action int

const (
	actionServe action = iota
	actionHelp
	actionPrintConfig
)

// loadConfig applies the layers and validates the result. Errors name the
// offending key (and file) so an operator can fix them before wsd listens.
func loadConfig(args, environ []string, stderr io.Writer) (appConfig, action, *pflag.FlagSet, error) {
	defaults := defaultAppConfig()
	k, err := sectionsKoanf(&defaults)
	if err != nil {
		return appConfig{}, 0, nil, fmt.Errorf("load defaults: %w", err)
	}
	known := k.All()

	fs := newFlagSet(known)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return appConfig{}, actionHelp, fs, nil
		}
		return appConfig{}, 0, fs, err
	}
	if rest := fs.Args(); len(rest) > 0 {
		return appConfig{}, 0, fs, fmt.Errorf("unexpected argument %q (flags are --key=value)", rest[0])
	}

	if path, _ := fs.GetString("config"); path != "" {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(path), yaml.Parser()); err != nil {
			return appConfig{}, 0, fs, fmt.Errorf("config file %s: %w", path, err)
		}
		var unknown []string
		for _, key := range fk.Keys() {
			if _, ok := known[key]; !ok {
				unknown = append(unknown, key)
			}
		}
		if len(unknown) > 0 {
			return appConfig{}, 0, fs, fmt.Errorf("config file %s: unknown keys: %s", path, strings.Join(unknown, ", "))
		}
		if err := k.Merge(fk); err != nil {
			return appConfig{}, 0, fs, fmt.Errorf("config file %s: %w", path, err)
		}
	}

	var ignored []string
	err = k.Load(env.Provider(".", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, v string) (string, any) {
			key := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, envPrefix), envLevel, "."))
			def, ok := known[key]
			if !ok {
				ignored = append(ignored, name)
				return "", nil
			}
			if _, isList := def.([]string); isList {
				return key, splitList(v)
			}
			return key, v
		},
	}), nil)
	if err != nil {
		return appConfig{}, 0, fs, fmt.Errorf("environment: %w", err)
	}
	if len(ignored) > 0 {
		slices.Sort(ignored)
		fmt.Fprintf(stderr, "wsd: ignoring unknown environment variables: %s\n", strings.Join(ignored, ", "))
	}
	err = k.Load(posflag.ProviderWithFlag(fs, ".", k, func(f *pflag.Flag) (string, any) {
		if _, ok := known[f.Name]; !ok {
			return "", nil // --config, --print-config
		}
		return f.Name, posflag.FlagVal(fs, f)
	}), nil)
	if err != nil {
		return appConfig{}, 0, fs, fmt.Errorf("flags: %w", err)
	}

	cfg := defaultAppConfig()
	for _, sec := range cfg.sections() {
		sk := k
		if sec.prefix != "" {
			sk = k.Cut(sec.prefix)
		} else {
			sk = k.Copy()
			for _, other := range cfg.sections() {
				if other.prefix != "" {
					sk.Delete(other.prefix)
				}
			}
		}
		err := sk.UnmarshalWithConf("", sec.ptr, koanf.UnmarshalConf{
			Tag: "koanf",
			DecoderConfig: &mapstructure.DecoderConfig{
				DecodeHook: mapstructure.ComposeDecodeHookFunc(
					mapstructure.StringToTimeDurationHookFunc(),
					mapstructure.StringToSliceHookFunc(","),
				),
				WeaklyTypedInput: true,
				ErrorUnused:      true,
				TagName:          "koanf",
				Result:           sec.ptr,
			},
		})
		if err != nil {
			return appConfig{}, 0, fs, fmt.Errorf("configuration%s: %w", strings.TrimSuffix(" "+sec.prefix, " "), err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return appConfig{}, 0, fs, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if p, _ := fs.GetBool("print-config"); p {
		return cfg, actionPrintConfig, fs, nil
	}
	return cfg, actionServe, fs, nil
}

// sectionsKoanf flattens the sections of c into one koanf tree.
func sectionsKoanf(c *appConfig) (*koanf.Koanf, error) {
	k := koanf.New(".")
	for _, sec := range c.sections() {
		sk := koanf.New(".")
		if err := sk.Load(structs.Provider(sec.ptr, "koanf"), nil); err != nil {
			return nil, err
		}
		var err error
		if sec.prefix == "" {
			err = k.Merge(sk)
		} else {
			err = k.MergeAt(sk, sec.prefix)
		}
		if err != nil {
			return nil, err
		}
	}
	return k, nil
}

func splitList(v string) []string {
	out := []string{}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// newFlagSet defines one flag per configuration key, typed by its
// default, so `wsd --help` lists every key with its default.
func newFlagSet(known map[string]any) *pflag.FlagSet {
	fs := pflag.NewFlagSet("wsd", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.String("config", "", "YAML configuration file")
	fs.Bool("print-config", false, "print the effective configuration as YAML and exit")
	keys := make([]string, 0, len(known))
	for key := range known {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		usage := keyHelp[key]
		switch v := known[key].(type) {
		case string:
			fs.String(key, v, usage)
		case int:
			fs.Int(key, v, usage)
		case int64:
			fs.Int64(key, v, usage)
		case float64:
			fs.Float64(key, v, usage)
		case bool:
			fs.Bool(key, v, usage)
		case time.Duration:
			fs.Duration(key, v, usage)
		case []string:
			fs.StringSlice(key, v, usage)
		default:
			panic(fmt.Sprintf("config key %s has unsupported type %T", key, v))
		}
	}
	return fs
}

// printConfig writes cfg as YAML, durations in Go syntax ("25s").
func printConfig(w io.Writer, cfg appConfig) error {
	k, err := sectionsKoanf(&cfg)
	if err != nil {
		return err
	}
	for key, v := range k.All() {
		if reflect.TypeOf(v) == reflect.TypeFor[time.Duration]() {
			_ = k.Set(key, v.(time.Duration).String())
		}
	}
	b, err := k.Marshal(yaml.Parser())
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// keyHelp is the one-line description shown by --help.
var keyHelp = map[string]string{
	"listen":                          "public address (WebSocket endpoints)",
	"admin_listen":                    "admin address (/healthz, /readyz, /debug/stats, /metrics, /debug/pprof/); no auth, loopback by default",
	"admin.pprof":                     "serve Go profiles on the admin /debug/pprof/ (off: 404)",
	"admin.max_profile_duration":      "longest profile or trace a /debug/pprof/ request may ask for (400 above)",
	"admin.max_connections":           "open admin TCP connections (503 at accept above)",
	"limits.max_connections":          "upgraded connections, process-wide (503 above)",
	"limits.max_connections_per_ip":   "upgraded connections per client address (429 above)",
	"limits.max_connections_per_user": "upgraded connections per token sub with auth.mode jwt (429 above; 0: off)",
	"limits.max_handshakes":           "public TCP connections not yet upgraded (closed at accept above)",
	"limits.upgrade_rate":             "upgrades per second, token bucket (429 above)",
	"limits.upgrade_burst":            "upgrade token bucket size",
	"limits.fd_headroom":              "fraction of RLIMIT_NOFILE kept free (503 and /readyz 503 above)",
	"limits.max_message_bytes":        "largest accepted message (close 1009 above)",
	"limits.handshake_timeout":        "time to send the upgrade request headers (slowloris)",
	"limits.frame_timeout":            "time from a data message's first byte to its last (close 1008 above)",
	"limits.max_partial_bytes":        "process-wide budget for large messages still being received (bytes)",
	"limits.allowed_origins":          "accepted Origin values, comma-separated; empty: any (403 otherwise)",
	"limits.message_rate":             "inbound messages per second per connection, shaped (0: off)",
	"limits.message_burst":            "inbound message token bucket size",
	"backpressure.warn_bytes":         "send buffer level that logs a warning",
	"backpressure.pause_bytes":        "send buffer level that pauses reading",
	"backpressure.resume_bytes":       "send buffer level below which reading resumes (< pause_bytes)",
	"backpressure.max_bytes":          "send buffer cap for topic subscribers (slow consumer above)",
	"backpressure.max_paused":         "longest pause before closing with 1013",
	"backpressure.write_timeout":      "longest single frame write before closing",
	"backpressure.slow_consumer":      "policy above max_bytes: close (1013) or drop",
	"heartbeat.ping_interval":         "server ping period",
	"heartbeat.pong_timeout":          "silence allowed after ping_interval before closing",
	"shutdown.drain_timeout":          "time for connections to close after 1001 before force-close",
	"log.level":                       "debug, info, warn or error",
	"auth.mode":                       "none (anyone may connect) or jwt (a token on every upgrade: 401/403 before it)",
	"auth.jwt.hmac_secret":            "HS256 key, >= 32 bytes (shown by --print-config: prefer the environment or hmac_secret_file)",
	"auth.jwt.hmac_secret_file":       "file holding the HS256 key",
	"auth.jwt.jwks_url":               "JWK Set URL of RS256/ES256/EdDSA keys, refreshed hourly and on an unknown kid",
	"auth.jwt.issuer":                 "required iss claim; empty: not checked",
	"auth.jwt.audience":               "required aud claim; empty: not checked",
	"auth.jwt.leeway":                 "clock skew allowed on exp and nbf",
	"log.format":                      "json or text",

	// The telemetry keys mirror OTEL_* variables: empty leaves the
	// environment in charge, a value overrides it.
	"telemetry.service_name":        "service.name (OTEL_SERVICE_NAME; default wsd)",
	"telemetry.resource_attributes": "extra resource attributes k=v,k=v (OTEL_RESOURCE_ATTRIBUTES)",
	"telemetry.traces_exporter":     "otlp, console or none (OTEL_TRACES_EXPORTER; default otlp when an OTLP endpoint is set, else none)",
	"telemetry.metrics_exporter":    "prometheus (admin /metrics, default), otlp, console or none (OTEL_METRICS_EXPORTER)",
	"telemetry.logs_exporter":       "otlp, console or none: also send log lines through the OTel logs bridge (OTEL_LOGS_EXPORTER; default none)",
	"telemetry.otlp_endpoint":       "OTLP collector URL, e.g. http://collector:4318 (OTEL_EXPORTER_OTLP_ENDPOINT)",
	"telemetry.otlp_protocol":       "http/protobuf or grpc (OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf)",
	"telemetry.traces_sampler":      "trace sampler, e.g. parentbased_traceidratio (OTEL_TRACES_SAMPLER)",
	"telemetry.traces_sampler_arg":  "sampler argument, e.g. 0.1 (OTEL_TRACES_SAMPLER_ARG)",
	"telemetry.batch_timeout":       "longest a finished span waits before export (OTEL_BSP_SCHEDULE_DELAY wins)",
	"telemetry.record_user_id":      "put the token's sub on session spans as enduser.id (personal data: off)",
	"telemetry.message_spans":       "fraction of data messages (0 to 1) that get a span, for debugging; 0: off",

	"bus.kind":                        "local (topics within this replica) or nats (shared by every replica on the NATS servers)",
	"bus.nats.url":                    "NATS server URLs, comma-separated (nats://, tls://, ws://, wss://)",
	"bus.nats.subject_prefix":         "namespace of wsd's subjects: topic T is <prefix>.t.<T as one token>",
	"bus.nats.credentials_file":       "NATS .creds file (JWT + NKey seed); empty: none",
	"bus.nats.token":                  "NATS authentication token; empty: none (shown by --print-config: prefer the environment)",
	"bus.nats.tls_ca_file":            "PEM CAs of the NATS servers' certificates; empty: system roots",
	"bus.nats.tls_cert_file":          "PEM client certificate for NATS (with tls_key_file)",
	"bus.nats.tls_key_file":           "PEM client key for NATS (with tls_cert_file)",
	"bus.nats.connect_timeout":        "bound of one connection attempt to NATS",
	"bus.nats.reconnect_wait":         "first pause between reconnect rounds (doubles, +25% jitter; reconnects forever)",
	"bus.nats.reconnect_wait_max":     "longest pause between reconnect rounds",
	"bus.nats.reconnect_buffer_bytes": "publishes kept while reconnecting, bytes (0: none, dropped and counted)",
	"bus.nats.write_timeout":          "a NATS server accepting no write for this long is treated as lost",
	"bus.nats.drain_timeout":          "bound of the graceful close of the NATS connection at shutdown",
	"bus.nats.publish_queue":          "publishes waiting for NATS; above: dropped and counted (publish_queue_full)",
	"bus.nats.pending_messages":       "messages from other replicas waiting for fan-out, per topic (slow_consumer above)",
	"bus.nats.pending_bytes":          "bytes from other replicas waiting for fan-out, per topic (slow_consumer above)",
}
