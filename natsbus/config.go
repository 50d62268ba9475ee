package natsbus

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Defaults of Config. They are package values, not constants, so that
// tests can shrink them; change them only before calling DefaultConfig.
var (
	DefaultURL              = "nats://127.0.0.1:4222"
	DefaultSubjectPrefix    = "wsd"
	DefaultConnectTimeout   = 2 * time.Second
	DefaultReconnectWait    = 250 * time.Millisecond
	DefaultReconnectWaitMax = 10 * time.Second
	DefaultWriteTimeout     = 5 * time.Second
	DefaultDrainTimeout     = 5 * time.Second
	DefaultPublishQueue     = 8192
	DefaultPendingMessages  = 65536
	DefaultPendingBytes     = 64 << 20
)

// Config is the bus.nats section: how a replica reaches the NATS
// servers shared by every replica. Keys (koanf tags) are relative to
// bus.nats. The zero value is not valid (no URL, no limits): start from
// DefaultConfig.
type Config struct {
	// URL lists the NATS servers, comma-separated
	// ("nats://a:4222,nats://b:4222"); each is
	// scheme://host[:port] with scheme nats, tls, ws or wss, and may
	// carry user:password. The client connects to one and fails over to
	// the others (and to the servers the cluster advertises).
	URL string `koanf:"url"`
	// SubjectPrefix is the namespace of wsd's subjects: topic T is
	// published on <prefix>.t.<T encoded as one token>. One or more
	// dot-separated tokens of [A-Za-z0-9_-]. Deployments sharing a NATS
	// cluster keep their topics apart with different prefixes.
	SubjectPrefix string `koanf:"subject_prefix"`
	// CredentialsFile is a NATS .creds file (user JWT and NKey seed);
	// empty: none.
	CredentialsFile string `koanf:"credentials_file"`
	// Token is a NATS authentication token; empty: none. At most one of
	// CredentialsFile and Token. --print-config shows it: prefer the
	// environment (WSD_BUS__NATS__TOKEN) or a credentials file.
	Token string `koanf:"token"`
	// TLSCAFile is a PEM file of the CAs that sign the servers'
	// certificates (tls:// URLs); empty: the system roots.
	TLSCAFile string `koanf:"tls_ca_file"`
	// TLSCertFile and TLSKeyFile are a PEM client certificate and key for
	// servers that verify clients; both or neither.
	TLSCertFile string `koanf:"tls_cert_file"`
	TLSKeyFile  string `koanf:"tls_key_file"`
	// ConnectTimeout bounds one connection attempt (TCP, TLS, handshake).
	ConnectTimeout time.Duration `koanf:"connect_timeout"`
	// ReconnectWait is the pause after every server was tried once
	// without success; it doubles after each further round, up to
	// ReconnectWaitMax, with up to 25% random jitter so that replicas
	// do not reconnect in lockstep. Reconnection never gives up, and wsd
	// also starts when no server is reachable.
	ReconnectWait    time.Duration `koanf:"reconnect_wait"`
	ReconnectWaitMax time.Duration `koanf:"reconnect_wait_max"`
	// ReconnectBufferBytes is how many bytes of publishes the client
	// keeps while reconnecting and sends once reconnected. 0 (the
	// default) keeps none: a message published while disconnected is
	// dropped and counted at once, the only choice with exact loss
	// counts; buffered messages may still be lost uncounted (e.g. if the
	// other replicas have not resubscribed yet). Publishes beyond the
	// buffer are dropped and counted.
	ReconnectBufferBytes int `koanf:"reconnect_buffer_bytes"`
	// WriteTimeout bounds a write to the NATS server; a server that
	// accepts nothing for this long is treated as lost (reconnect).
	// Stops a stalled broker from holding wsd's publishes forever.
	WriteTimeout time.Duration `koanf:"write_timeout"`
	// DrainTimeout bounds the graceful close at shutdown (pending
	// publishes flushed, subscriptions drained).
	DrainTimeout time.Duration `koanf:"drain_timeout"`
	// PublishQueue is how many publishes wait for the broker connection;
	// above it they are dropped and counted (publish_queue_full). Sessions
	// never wait for the broker: this queue stops a slow broker from
	// blocking their read loops or growing memory.
	PublishQueue int `koanf:"publish_queue"`
	// PendingMessages and PendingBytes bound the messages received for
	// one topic and not yet fanned out locally; above either, the client
	// drops and counts them (slow_consumer). Stops a burst from other
	// replicas from growing memory without limit.
	PendingMessages int `koanf:"pending_messages"`
	PendingBytes    int `koanf:"pending_bytes"`
}

// DefaultConfig returns the built-in defaults.
func DefaultConfig() Config {
	return Config{
		URL:              DefaultURL,
		SubjectPrefix:    DefaultSubjectPrefix,
		ConnectTimeout:   DefaultConnectTimeout,
		ReconnectWait:    DefaultReconnectWait,
		ReconnectWaitMax: DefaultReconnectWaitMax,
		WriteTimeout:     DefaultWriteTimeout,
		DrainTimeout:     DefaultDrainTimeout,
		PublishQueue:     DefaultPublishQueue,
		PendingMessages:  DefaultPendingMessages,
		PendingBytes:     DefaultPendingBytes,
	}
}

// Validate reports every invalid setting: nil for a valid configuration,
// otherwise one error per bad setting (joined with errors.Join), each
// starting with its key relative to bus.nats ("url: ").
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if err := validateURLs(c.URL); err != nil {
		bad("url", "%v", err)
	}
	if !validPrefix(c.SubjectPrefix) {
		bad("subject_prefix", "must be dot-separated tokens of [A-Za-z0-9_-], got %q", c.SubjectPrefix)
	}
	if c.CredentialsFile != "" && c.Token != "" {
		bad("token", "set at most one of credentials_file and token")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		bad("tls_cert_file", "tls_cert_file and tls_key_file go together")
	}
	positiveDur := func(key string, v time.Duration) {
		if v <= 0 {
			bad(key, "must be a positive duration, got %s", v)
		}
	}
	positiveDur("connect_timeout", c.ConnectTimeout)
	positiveDur("reconnect_wait", c.ReconnectWait)
	positiveDur("write_timeout", c.WriteTimeout)
	positiveDur("drain_timeout", c.DrainTimeout)
	if c.ReconnectWaitMax < c.ReconnectWait {
		bad("reconnect_wait_max", "must be >= reconnect_wait (%s), got %s", c.ReconnectWait, c.ReconnectWaitMax)
	}
	if c.ReconnectBufferBytes < 0 {
		bad("reconnect_buffer_bytes", "must be >= 0 (0: no buffering), got %d", c.ReconnectBufferBytes)
	}
	positiveInt := func(key string, v int) {
		if v <= 0 {
			bad(key, "must be > 0, got %d", v)
		}
	}
	positiveInt("publish_queue", c.PublishQueue)
	positiveInt("pending_messages", c.PendingMessages)
	positiveInt("pending_bytes", c.PendingBytes)
	return errors.Join(errs...)
}

// validateURLs checks a comma-separated list of server URLs. A scheme is
// required (nats.go would guess one) so that a typo such as "nast://"
// fails here instead of as an endless reconnect loop.
func validateURLs(list string) error {
	if strings.TrimSpace(list) == "" {
		return errors.New("must list at least one server URL")
	}
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("%q is not a URL: %w", raw, err)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("%q: scheme must be nats, tls, ws or wss", raw)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("%q has no host", raw)
		}
	}
	return nil
}

// validPrefix: one or more non-empty tokens of [A-Za-z0-9_-] separated
// by dots, so that no prefix can contain a wildcard or an empty token.
func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			if !tokenChar(tok[i]) {
				return false
			}
		}
	}
	return true
}

func tokenChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}
