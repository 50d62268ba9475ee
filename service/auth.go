package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Authentication modes (AuthConfig.Mode).
const (
	// AuthNone lets anyone connect, subscribe and publish.
	AuthNone = "none"
	// AuthJWT requires a signed JWT on every upgrade (see AuthConfig).
	AuthJWT = "jwt"
)

// AuthConfig is the "auth" section. The zero value is not valid (Mode
// must be set): start from DefaultConfig().Auth, which is AuthNone.
type AuthConfig struct {
	// Mode is "none" (default: the quick start stays open) or "jwt":
	// every upgrade needs a token (Authorization: Bearer, or the
	// access_token query parameter for browsers), checked before the
	// handshake (401 otherwise), whose topics claim grants the topics
	// the session may subscribe to (403 otherwise) and publish to (1008
	// otherwise), and whose exp ends the session (4001). Stops anyone
	// who can reach wsd from reading or writing every topic.
	Mode string `koanf:"mode"`
	// JWT holds the key source and the required claims.
	JWT JWTConfig `koanf:"jwt"`
}

// JWTConfig is the auth.jwt section. With auth.mode jwt exactly one key
// source (HMACSecret, HMACSecretFile, JWKSURL) must be set. Algorithms
// are pinned to the key source: HS256 for a secret, RS256, ES256 and
// EdDSA for a JWKS; a token with any other alg (none included) is
// refused, so a token "signed" with a JWKS's public RSA key as an HMAC
// secret never verifies.
type JWTConfig struct {
	// HMACSecret is the HS256 key, at least 32 bytes (RFC 7518 §3.2: a
	// shorter key is open to offline guessing from one token). Prefer
	// HMACSecretFile or the environment (WSD_AUTH__JWT__HMAC_SECRET):
	// --print-config shows it.
	HMACSecret string `koanf:"hmac_secret"`
	// HMACSecretFile is a file holding the HS256 key (a final newline
	// is ignored); read once by New.
	HMACSecretFile string `koanf:"hmac_secret_file"`
	// JWKSURL is an http(s) JWK Set of RS256, ES256 or EdDSA keys,
	// fetched when Serve starts (Serve fails if it yields no key),
	// refreshed hourly in the background; a token with an unknown kid
	// triggers at most one refresh per minute.
	JWKSURL string `koanf:"jwks_url"`
	// Issuer, when set, must equal the token's iss.
	Issuer string `koanf:"issuer"`
	// Audience, when set, must be in the token's aud.
	Audience string `koanf:"audience"`
	// Leeway is the clock skew allowed on exp and nbf (default 5s).
	Leeway time.Duration `koanf:"leeway"`
}

// minHMACSecret is the shortest HS256 key accepted (256 bits).
const minHMACSecret = 32

// validate appends one error per bad auth key.
func (c AuthConfig) validate(bad func(key, format string, args ...any)) {
	switch c.Mode {
	case AuthNone:
	case AuthJWT:
		j := c.JWT
		var set []string
		for _, src := range [...]struct{ key, v string }{
			{"auth.jwt.hmac_secret", j.HMACSecret}, {"auth.jwt.hmac_secret_file", j.HMACSecretFile}, {"auth.jwt.jwks_url", j.JWKSURL},
		} {
			if src.v != "" {
				set = append(set, src.key)
			}
		}
		switch {
		case len(set) == 0:
			bad("auth.jwt.hmac_secret", "auth.mode jwt needs exactly one key source: auth.jwt.hmac_secret, auth.jwt.hmac_secret_file or auth.jwt.jwks_url; none is set")
		case len(set) > 1:
			bad(set[1], "auth.mode jwt needs exactly one key source, got %s", strings.Join(set, " and "))
		}
		if j.HMACSecret != "" && len(j.HMACSecret) < minHMACSecret {
			bad("auth.jwt.hmac_secret", "must be at least %d bytes, got %d", minHMACSecret, len(j.HMACSecret))
		}
		if j.JWKSURL != "" && !strings.HasPrefix(j.JWKSURL, "https://") && !strings.HasPrefix(j.JWKSURL, "http://") {
			bad("auth.jwt.jwks_url", "must be an http:// or https:// URL, got %q", j.JWKSURL)
		}
	default:
		bad("auth.mode", "must be %q or %q, got %q", AuthNone, AuthJWT, c.Mode)
	}
	if c.JWT.Leeway < 0 {
		bad("auth.jwt.leeway", "must be >= 0, got %s", c.JWT.Leeway)
	}
}

// AuthFailure says why a token was refused or a right was missing. The
// set is fixed, so it is safe as a metric attribute. The zero value is
// not a failure and is never reported.
type AuthFailure string

// The authentication and authorization failures.
const (
	AuthMissing          AuthFailure = "missing"           // no token: 401
	AuthMalformed        AuthFailure = "malformed"         // not a JWT, or sent twice: 401
	AuthSignature        AuthFailure = "signature"         // bad signature, alg or kid: 401
	AuthExpired          AuthFailure = "expired"           // exp passed (beyond leeway): 401
	AuthNotYetValid      AuthFailure = "not_yet_valid"     // nbf ahead (beyond leeway): 401
	AuthClaims           AuthFailure = "claims"            // sub, exp, iss, aud or topics wrong: 401
	AuthTopicForbidden   AuthFailure = "topic_forbidden"   // no sub right on the topic: 403
	AuthPublishForbidden AuthFailure = "publish_forbidden" // message without pub right: 1008
)

// AuthFailures lists every AuthFailure, for exporting counters at zero.
var AuthFailures = []AuthFailure{AuthMissing, AuthMalformed, AuthSignature, AuthExpired,
	AuthNotYetValid, AuthClaims, AuthTopicForbidden, AuthPublishForbidden}

// maxTokenBytes bounds a token: real ones are well under 4 KiB, and the
// request header cap (16 KiB) bounds the rest.
const maxTokenBytes = 8 << 10

// requestToken returns the bearer token of r (RFC 6750 §2.1 header or
// §2.3 query parameter). A request with none gets AuthMissing; one with
// a token in both places, twice, with another scheme, or over
// maxTokenBytes gets AuthMalformed (§3.1: one method only).
func requestToken(r *http.Request) (string, AuthFailure) {
	hdrs := r.Header.Values("Authorization")
	q := r.URL.Query()["access_token"]
	switch {
	case len(hdrs) == 0 && len(q) == 0:
		return "", AuthMissing
	case len(hdrs)+len(q) > 1:
		return "", AuthMalformed
	}
	var tok string
	if len(hdrs) == 1 {
		scheme, rest, ok := strings.Cut(strings.TrimSpace(hdrs[0]), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", AuthMalformed
		}
		tok = strings.TrimLeft(rest, " ")
	} else {
		tok = q[0]
	}
	if tok == "" || len(tok) > maxTokenBytes || strings.ContainsAny(tok, " \t\r\n") {
		return "", AuthMalformed
	}
	return tok, ""
}

// topicRights is the topics claim: the topic patterns a token may
// subscribe to and publish to. A pattern is an exact topic or a prefix
// ending in * ("chat.*"; "*" alone is every topic).
type topicRights struct {
	Sub []string `json:"sub"`
	Pub []string `json:"pub"`
}

// maxPatternBytes bounds a pattern: a topic is at most 128 bytes, so a
// longer prefix matches nothing.
const maxPatternBytes = 129

// parseTopics decodes and checks a topics claim. An absent claim (nil or
// JSON null) grants nothing; anything but an object of two string lists
// of valid patterns is an error.
func parseTopics(raw json.RawMessage) (topicRights, error) {
	var tr topicRights
	if len(raw) == 0 || string(raw) == "null" {
		return tr, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tr); err != nil {
		return topicRights{}, fmt.Errorf("topics claim: %w", err)
	}
	if dec.More() {
		return topicRights{}, errors.New("topics claim: trailing data")
	}
	for _, list := range [...][]string{tr.Sub, tr.Pub} {
		for _, p := range list {
			if !validPattern(p) {
				return topicRights{}, fmt.Errorf("topics claim: %q is not a topic or a prefix ending in *", p)
			}
		}
	}
	return tr, nil
}

func validPattern(p string) bool {
	if len(p) > maxPatternBytes {
		return false
	}
	if prefix, ok := strings.CutSuffix(p, "*"); ok {
		for i := 0; i < len(prefix); i++ {
			if !topicByte(prefix[i]) {
				return false
			}
		}
		return true
	}
	return ValidTopic(p)
}

func topicByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// matchTopic reports whether topic matches one of patterns.
func matchTopic(patterns []string, topic string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(topic, prefix) {
				return true
			}
		} else if p == topic {
			return true
		}
	}
	return false
}

// wsdClaims are the claims wsd reads: the registered ones and topics.
type wsdClaims struct {
	jwt.RegisteredClaims
	Topics json.RawMessage `json:"topics,omitempty"`
}

// identity is an authenticated token: its user, rights and expiry.
type identity struct {
	user    string
	rights  topicRights
	expires time.Time // exp + leeway: the session ends then (4001)
}

// authenticator verifies tokens. Its keyfunc and methods are fixed
// before the public listener serves, and only read afterwards.
type authenticator struct {
	cfg     JWTConfig
	methods []string
	keyfunc jwt.Keyfunc
	// now is the clock for exp and nbf (time.Now; tests move it).
	now func() time.Time
}

// newAuthenticator returns nil for auth.mode none. For a secret file it
// fails when the file cannot be read or holds too short a key; a JWKS
// is fetched by startJWKS, from Serve.
func newAuthenticator(c AuthConfig) (*authenticator, error) {
	if c.Mode != AuthJWT {
		return nil, nil
	}
	a := &authenticator{cfg: c.JWT, now: time.Now}
	secret := []byte(c.JWT.HMACSecret)
	if f := c.JWT.HMACSecretFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("auth.jwt.hmac_secret_file: %w", err)
		}
		secret = []byte(strings.TrimRight(string(b), "\r\n"))
		if len(secret) < minHMACSecret {
			return nil, fmt.Errorf("auth.jwt.hmac_secret_file: %s holds %d bytes, want at least %d", f, len(secret), minHMACSecret)
		}
	}
	if len(secret) > 0 {
		a.methods = []string{jwt.SigningMethodHS256.Alg()}
		a.keyfunc = func(*jwt.Token) (any, error) { return secret, nil }
	} else {
		a.methods = []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg(), jwt.SigningMethodEdDSA.Alg()}
	}
	return a, nil
}

// verify parses and validates tok. The error is for the log: it names
// the failure, never the token.
func (a *authenticator) verify(tok string) (identity, AuthFailure, error) {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(a.methods), jwt.WithExpirationRequired(),
		jwt.WithLeeway(a.cfg.Leeway), jwt.WithTimeFunc(a.now),
	}
	if a.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.cfg.Issuer))
	}
	if a.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(a.cfg.Audience))
	}
	var c wsdClaims
	if _, err := jwt.NewParser(opts...).ParseWithClaims(tok, &c, a.keyfunc); err != nil {
		fail := classifyJWTError(err)
		if fail == AuthMalformed || fail == AuthSignature {
			// The sub of an unverified token is whatever the client
			// wrote: it is not logged as a user.
			return identity{}, fail, err
		}
		return identity{user: c.Subject}, fail, err
	}
	if c.Subject == "" {
		return identity{}, AuthClaims, errors.New("token has no sub")
	}
	tr, err := parseTopics(c.Topics)
	if err != nil {
		return identity{user: c.Subject}, AuthClaims, err
	}
	return identity{user: c.Subject, rights: tr, expires: c.ExpiresAt.Add(a.cfg.Leeway)}, "", nil
}

// classifyJWTError maps a jwt/v5 error to its failure. The signature is
// checked before the claims, so an error about claims means a genuine
// token.
func classifyJWTError(err error) AuthFailure {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return AuthMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return AuthSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return AuthExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return AuthNotYetValid
	}
	return AuthClaims
}

// authenticate checks the upgrade's token and, for a topic, the right to
// subscribe. A nil rejection admits the request with id.
func (s *Server) authenticate(r *http.Request, ep Endpoint, topic string) (identity, *rejection) {
	tok, fail := requestToken(r)
	var id identity
	var err error
	if fail == "" {
		id, fail, err = s.auth.verify(tok)
	}
	if fail == "" && ep == EndpointTopic && !matchTopic(id.rights.Sub, topic) {
		fail, err = AuthTopicForbidden, fmt.Errorf("no sub right on topic %q", topic)
	}
	if fail == "" {
		return id, nil
	}
	s.obs.AuthFailed(r.Context(), fail)
	attrs := []any{"reason", string(fail), "remote", r.RemoteAddr}
	if id.user != "" {
		attrs = append(attrs, "sub", id.user)
	}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	s.log.DebugContext(r.Context(), "authentication failed", attrs...)
	if fail == AuthTopicForbidden {
		return id, &rejection{reason: RejectForbidden, status: http.StatusForbidden,
			wwwAuth: `Bearer error="insufficient_scope"`, msg: "token may not subscribe to this topic"}
	}
	return id, &rejection{reason: RejectUnauthorized, status: http.StatusUnauthorized,
		wwwAuth: `Bearer error="invalid_token"`, msg: "missing or invalid token"}
}
