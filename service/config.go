package service

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Defaults. They are package values, not constants, so that tests can
// shrink them; change them only before calling DefaultConfig.
var (
	DefaultListen              = ":8080"
	DefaultAdminListen         = "127.0.0.1:9090"
	DefaultAdminMaxConnections = 64
	DefaultMaxProfileDuration  = 30 * time.Second
	DefaultMaxConnections      = 10000
	DefaultMaxConnectionsPerIP = 256
	DefaultMaxHandshakes       = 1024
	DefaultUpgradeRate         = 500.0
	DefaultUpgradeBurst        = 1000
	DefaultFDHeadroom          = 0.10
	DefaultMaxMessageBytes     = 64 << 10
	DefaultHandshakeTimeout    = 5 * time.Second
	DefaultFrameTimeout        = 10 * time.Second
	DefaultMaxPartialBytes     = int64(64 << 20)
	DefaultMessageRate         = 1000.0
	DefaultMessageBurst        = 2000
	DefaultWarnBytes           = int64(256 << 10)
	DefaultPauseBytes          = int64(1 << 20)
	DefaultResumeBytes         = int64(512 << 10)
	DefaultMaxBytes            = int64(4 << 20)
	DefaultMaxPaused           = 30 * time.Second
	DefaultWriteTimeout        = 10 * time.Second
	DefaultPingInterval        = 25 * time.Second
	DefaultPongTimeout         = 10 * time.Second
	DefaultDrainTimeout        = 10 * time.Second
	DefaultAuthLeeway          = 5 * time.Second
)

// Slow-consumer policies (BackpressureConfig.SlowConsumer).
const (
	// SlowConsumerClose closes a subscriber above max_bytes with 1013.
	SlowConsumerClose = "close"
	// SlowConsumerDrop discards messages for a subscriber above max_bytes
	// until its buffer drains below resume_bytes, counting each drop.
	SlowConsumerDrop = "drop"
)

// Config is the whole configuration of a Server. The zero value is not
// usable: start from DefaultConfig. Keys (koanf tags) are the names used
// in the YAML file, in WSD_ environment variables and in flags.
type Config struct {
	// Listen is the public address (WebSocket endpoints).
	Listen string `koanf:"listen"`
	// AdminListen is the admin address (/healthz, /readyz, /debug/stats,
	// /metrics, and /debug/pprof/ when Admin.Pprof is set). It is a
	// separate listener so that it keeps answering when the public one
	// is saturated. It has no authentication, so the default is
	// loopback only: an exposed admin port tells anyone the server's
	// load and, with pprof, its internals. Containers set ":9090" and
	// rely on the network (port publishing, policies) instead.
	AdminListen string `koanf:"admin_listen"`

	// Admin, Auth, Limits, Backpressure, Heartbeat, Shutdown and Log
	// are the sections of the same names.
	Admin        AdminConfig        `koanf:"admin"`
	Auth         AuthConfig         `koanf:"auth"`
	Limits       LimitsConfig       `koanf:"limits"`
	Backpressure BackpressureConfig `koanf:"backpressure"`
	Heartbeat    HeartbeatConfig    `koanf:"heartbeat"`
	Shutdown     ShutdownConfig     `koanf:"shutdown"`
	Log          LogConfig          `koanf:"log"`
}

// AdminConfig holds the admin listener's settings. The zero value is not
// valid (the caps must be positive): start from DefaultConfig().Admin.
type AdminConfig struct {
	// Pprof mounts Go's profiles on /debug/pprof/ (GET only). Off by
	// default: a goroutine dump (?debug=2) shows every connection's
	// stack, a heap profile the program's internals, and a CPU profile
	// or trace costs CPU while it runs.
	Pprof bool `koanf:"pprof"`
	// MaxProfileDuration caps the seconds parameter of /debug/pprof/
	// requests (CPU profile, trace, delta profiles); above it they get
	// 400. A CPU profile without seconds runs 30 s, so it is refused
	// when the cap is lower. Stops one request from holding the
	// process-wide profiler and an admin connection for as long as it
	// asks (profile?seconds=600).
	MaxProfileDuration time.Duration `koanf:"max_profile_duration"`
	// MaxConnections caps open admin TCP connections; more are answered
	// a canned 503 at accept and closed (counted in
	// refused_at_accept_total). Stops a client of the unauthenticated
	// admin port from holding descriptors and goroutines without bound.
	MaxConnections int `koanf:"max_connections"`
}

// LimitsConfig holds the admission caps and per-connection input limits.
// The zero value is not valid (Validate rejects zero caps and rates):
// start from DefaultConfig().Limits.
type LimitsConfig struct {
	// MaxConnections caps upgraded connections process-wide (503). Stops
	// a flood of clients from exhausting memory.
	MaxConnections int `koanf:"max_connections"`
	// MaxConnectionsPerIP caps upgraded connections from one address
	// (429). Stops one host from taking every slot.
	MaxConnectionsPerIP int `koanf:"max_connections_per_ip"`
	// MaxConnectionsPerUser caps upgraded connections per token sub
	// with auth.mode jwt (429); 0, the default, is off. Stops one
	// leaked or shared token from taking every slot from many
	// addresses.
	MaxConnectionsPerUser int `koanf:"max_connections_per_user"`
	// MaxHandshakes caps public TCP connections that have not upgraded
	// yet; more are closed at accept. Stops idle raw TCP connections
	// (which never send a request) from holding every descriptor.
	MaxHandshakes int `koanf:"max_handshakes"`
	// UpgradeRate and UpgradeBurst are a token bucket for upgrades per
	// second, process-wide (429). Stops reconnect storms.
	UpgradeRate  float64 `koanf:"upgrade_rate"`
	UpgradeBurst int     `koanf:"upgrade_burst"`
	// FDHeadroom is the fraction of RLIMIT_NOFILE kept free: upgrades are
	// refused (503) above (1-FDHeadroom)*limit open descriptors, so the
	// admin listener and the process itself never hit EMFILE.
	FDHeadroom float64 `koanf:"fd_headroom"`
	// MaxMessageBytes is the largest accepted message (else close 1009).
	// Stops a client from making the server buffer huge frames.
	MaxMessageBytes int `koanf:"max_message_bytes"`
	// HandshakeTimeout bounds reading the upgrade request headers.
	// Stops slowloris clients that trickle headers.
	HandshakeTimeout time.Duration `koanf:"handshake_timeout"`
	// FrameTimeout bounds the time from a data message's first header
	// byte to its last payload byte (all fragments); a peer slower than
	// that is closed with 1008 "frame timeout". Time the server spends
	// not reading (pause, shaping) does not count. Stops peers that send
	// a header for a large frame and stall, pinning its buffer.
	FrameTimeout time.Duration `koanf:"frame_timeout"`
	// MaxPartialBytes is the process-wide budget for data messages being
	// received: the declared sizes of messages over 4 KiB whose last
	// byte has not arrived. A connection whose message does not fit
	// waits, not reading, until the budget frees or FrameTimeout closes
	// it. Stops thousands of peers from each pinning max_message_bytes
	// with a stalled frame. Must be >= max_message_bytes.
	MaxPartialBytes int64 `koanf:"max_partial_bytes"`
	// AllowedOrigins, when non-empty, lists the accepted Origin values
	// (scheme://host[:port], or "*"); others get 403. Stops cross-site
	// WebSocket hijacking from browsers.
	AllowedOrigins []string `koanf:"allowed_origins"`
	// MessageRate and MessageBurst shape inbound messages per connection
	// (token bucket): over the rate, reading is delayed, not closed.
	// Stops one client from monopolising CPU. Rate 0 disables shaping.
	MessageRate  float64 `koanf:"message_rate"`
	MessageBurst int     `koanf:"message_burst"`
}

// BackpressureConfig holds the send-buffer thresholds. The send buffer of
// a connection is the payload bytes accepted for sending and not yet
// written to its socket. The zero value is not valid (ResumeBytes must
// be below PauseBytes, and there is no policy): start from
// DefaultConfig().Backpressure.
type BackpressureConfig struct {
	// WarnBytes: log and count once per episode when the buffer reaches it.
	WarnBytes int64 `koanf:"warn_bytes"`
	// PauseBytes: stop reading from the connection at this level, so TCP
	// flow control throttles the client. Stops a fast writer that does
	// not read from growing server memory.
	PauseBytes int64 `koanf:"pause_bytes"`
	// ResumeBytes: resume reading only below this level (< PauseBytes).
	ResumeBytes int64 `koanf:"resume_bytes"`
	// MaxBytes: hard cap for fan-out; a subscriber above it is a slow
	// consumer handled by SlowConsumer. Stops one slow subscriber from
	// holding unbounded memory or delaying the others.
	MaxBytes int64 `koanf:"max_bytes"`
	// MaxPaused: a connection paused longer than this is closed with 1013.
	MaxPaused time.Duration `koanf:"max_paused"`
	// WriteTimeout: a connection with writes pending and none completing
	// for this long is closed (a dead or hostile peer with a full TCP
	// window would otherwise hold its queue and descriptor forever).
	// Enforced by the housekeeping sweep, within a quarter of itself.
	WriteTimeout time.Duration `koanf:"write_timeout"`
	// SlowConsumer is the policy above MaxBytes: "close" or "drop".
	SlowConsumer string `koanf:"slow_consumer"`
}

// HeartbeatConfig holds the idle-peer detection settings. The zero value
// is not valid (both durations must be positive).
type HeartbeatConfig struct {
	// PingInterval: the server pings each connection this often.
	PingInterval time.Duration `koanf:"ping_interval"`
	// PongTimeout: a connection from which nothing arrives for
	// PingInterval+PongTimeout is closed. Stops half-open peers from
	// holding descriptors forever.
	PongTimeout time.Duration `koanf:"pong_timeout"`
}

// ShutdownConfig holds the graceful-shutdown settings. The zero value is
// not valid (DrainTimeout must be positive).
type ShutdownConfig struct {
	// DrainTimeout: after sending 1001 to every connection, wait this
	// long for them to close before force-closing the rest.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
}

// LogConfig holds the logging settings used by cmd/wsd. The zero value is
// not valid (Level and Format must be set).
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
	// Format is json or text.
	Format string `koanf:"format"`
}

// DefaultConfig returns the built-in defaults.
func DefaultConfig() Config {
	return Config{
		Listen:      DefaultListen,
		AdminListen: DefaultAdminListen,
		Admin: AdminConfig{
			MaxProfileDuration: DefaultMaxProfileDuration,
			MaxConnections:     DefaultAdminMaxConnections,
		},
		Auth: AuthConfig{Mode: AuthNone, JWT: JWTConfig{Leeway: DefaultAuthLeeway}},
		Limits: LimitsConfig{
			MaxConnections:      DefaultMaxConnections,
			MaxConnectionsPerIP: DefaultMaxConnectionsPerIP,
			MaxHandshakes:       DefaultMaxHandshakes,
			UpgradeRate:         DefaultUpgradeRate,
			UpgradeBurst:        DefaultUpgradeBurst,
			FDHeadroom:          DefaultFDHeadroom,
			MaxMessageBytes:     DefaultMaxMessageBytes,
			HandshakeTimeout:    DefaultHandshakeTimeout,
			FrameTimeout:        DefaultFrameTimeout,
			MaxPartialBytes:     DefaultMaxPartialBytes,
			AllowedOrigins:      []string{},
			MessageRate:         DefaultMessageRate,
			MessageBurst:        DefaultMessageBurst,
		},
		Backpressure: BackpressureConfig{
			WarnBytes:    DefaultWarnBytes,
			PauseBytes:   DefaultPauseBytes,
			ResumeBytes:  DefaultResumeBytes,
			MaxBytes:     DefaultMaxBytes,
			MaxPaused:    DefaultMaxPaused,
			WriteTimeout: DefaultWriteTimeout,
			SlowConsumer: SlowConsumerClose,
		},
		Heartbeat: HeartbeatConfig{
			PingInterval: DefaultPingInterval,
			PongTimeout:  DefaultPongTimeout,
		},
		Shutdown: ShutdownConfig{DrainTimeout: DefaultDrainTimeout},
		Log:      LogConfig{Level: "info", Format: "json"},
	}
}

// Validate reports every invalid setting: it returns nil for a valid
// configuration, otherwise one error per bad setting (joined with
// errors.Join), each starting with its key ("limits.max_connections: ").
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	positiveInt := func(key string, v int) {
		if v <= 0 {
			bad(key, "must be > 0, got %d", v)
		}
	}
	positiveBytes := func(key string, v int64) {
		if v <= 0 {
			bad(key, "must be > 0, got %d", v)
		}
	}
	positiveDur := func(key string, v time.Duration) {
		if v <= 0 {
			bad(key, "must be a positive duration, got %s", v)
		}
	}
	if c.Listen == "" {
		bad("listen", "must not be empty")
	}
	if c.AdminListen == "" {
		bad("admin_listen", "must not be empty")
	}
	positiveDur("admin.max_profile_duration", c.Admin.MaxProfileDuration)
	positiveInt("admin.max_connections", c.Admin.MaxConnections)
	c.Auth.validate(bad)
	l := c.Limits
	positiveInt("limits.max_connections", l.MaxConnections)
	positiveInt("limits.max_connections_per_ip", l.MaxConnectionsPerIP)
	if l.MaxConnectionsPerUser < 0 {
		bad("limits.max_connections_per_user", "must be >= 0 (0 disables the cap), got %d", l.MaxConnectionsPerUser)
	}
	positiveInt("limits.max_handshakes", l.MaxHandshakes)
	if l.UpgradeRate <= 0 {
		bad("limits.upgrade_rate", "must be > 0, got %g", l.UpgradeRate)
	}
	positiveInt("limits.upgrade_burst", l.UpgradeBurst)
	if l.FDHeadroom <= 0 || l.FDHeadroom >= 1 {
		bad("limits.fd_headroom", "must be in (0, 1), got %g", l.FDHeadroom)
	}
	positiveInt("limits.max_message_bytes", l.MaxMessageBytes)
	positiveDur("limits.handshake_timeout", l.HandshakeTimeout)
	positiveDur("limits.frame_timeout", l.FrameTimeout)
	if l.MaxPartialBytes < int64(l.MaxMessageBytes) {
		bad("limits.max_partial_bytes", "must be >= limits.max_message_bytes (%d), got %d", l.MaxMessageBytes, l.MaxPartialBytes)
	}
	for _, o := range l.AllowedOrigins {
		if o == "*" {
			continue
		}
		if u, err := url.Parse(o); err != nil || u.Scheme == "" || u.Host == "" {
			bad("limits.allowed_origins", "%q is not scheme://host[:port] or *", o)
		}
	}
	if l.MessageRate < 0 {
		bad("limits.message_rate", "must be >= 0 (0 disables shaping), got %g", l.MessageRate)
	}
	if l.MessageRate > 0 {
		positiveInt("limits.message_burst", l.MessageBurst)
	}
	b := c.Backpressure
	positiveBytes("backpressure.warn_bytes", b.WarnBytes)
	positiveBytes("backpressure.pause_bytes", b.PauseBytes)
	positiveBytes("backpressure.resume_bytes", b.ResumeBytes)
	positiveBytes("backpressure.max_bytes", b.MaxBytes)
	if b.ResumeBytes >= b.PauseBytes {
		bad("backpressure.resume_bytes", "must be < backpressure.pause_bytes (%d), got %d", b.PauseBytes, b.ResumeBytes)
	}
	if b.MaxBytes < b.PauseBytes {
		bad("backpressure.max_bytes", "must be >= backpressure.pause_bytes (%d), got %d", b.PauseBytes, b.MaxBytes)
	}
	positiveDur("backpressure.max_paused", b.MaxPaused)
	positiveDur("backpressure.write_timeout", b.WriteTimeout)
	if b.SlowConsumer != SlowConsumerClose && b.SlowConsumer != SlowConsumerDrop {
		bad("backpressure.slow_consumer", "must be %q or %q, got %q", SlowConsumerClose, SlowConsumerDrop, b.SlowConsumer)
	}
	positiveDur("heartbeat.ping_interval", c.Heartbeat.PingInterval)
	positiveDur("heartbeat.pong_timeout", c.Heartbeat.PongTimeout)
	positiveDur("shutdown.drain_timeout", c.Shutdown.DrainTimeout)
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		bad("log.format", "must be json or text, got %q", c.Log.Format)
	}
	return errors.Join(errs...)
}
