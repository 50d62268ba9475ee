package service

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testSecret is the HS256 key of the tests (32 bytes, the minimum).
const testSecret = "wsd-test-secret-0123456789abcdef"

// mint signs claims with testSecret.
func mint(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	return tok
}

// claimsFor is a valid claim set for user, an hour from expiry, with the
// given topics claim (nil: none).
func claimsFor(user string, topics any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": user, "exp": time.Now().Add(time.Hour).Unix()}
	if topics != nil {
		c["topics"] = topics
	}
	return c
}

func jwtConfig(c *Config) {
	c.Auth.Mode = AuthJWT
	c.Auth.JWT.HMACSecret = testSecret
}

// TestVerify: every way a token is refused maps to its failure, and
// alg confusion (none, HS256 over an RSA public key, unconfigured algs)
// never verifies.
func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	leeway := 5 * time.Second
	hmacAuth := &authenticator{
		cfg: JWTConfig{Issuer: "https://issuer.example", Audience: "wsd", Leeway: leeway}, now: func() time.Time { return now },
		methods: []string{"HS256"}, keyfunc: func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	// The JWKS authenticator as startJWKS builds it, with one RSA key.
	rsaAuth := &authenticator{
		cfg: JWTConfig{Leeway: leeway}, now: func() time.Time { return now },
		methods: []string{"RS256", "ES256", "EdDSA"}, keyfunc: func(*jwt.Token) (any, error) { return &rsaKey.PublicKey, nil },
	}

	base := func(mut func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix(), "iss": "https://issuer.example", "aud": "wsd"}
		if mut != nil {
			mut(c)
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key any, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatalf("sign %s: %v", m.Alg(), err)
		}
		return s
	}
	hs := func(mut func(jwt.MapClaims)) string {
		return sign(jwt.SigningMethodHS256, []byte(testSecret), base(mut))
	}
	at := func(d time.Duration) int64 { return now.Add(d).Unix() }

	for _, tt := range []struct {
		name string
		auth *authenticator
		tok  string
		want AuthFailure
	}{
		{"valid", hmacAuth, hs(nil), ""},
		{"alg none", hmacAuth, sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, base(nil)), AuthSignature},
		{"HS384 not configured", hmacAuth, sign(jwt.SigningMethodHS384, []byte(testSecret), base(nil)), AuthSignature},
		{"RS256 in HMAC mode", hmacAuth, sign(jwt.SigningMethodRS256, rsaKey, base(nil)), AuthSignature},
		{"other secret", hmacAuth, sign(jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdef!"), base(nil)), AuthSignature},
		{"tampered signature", hmacAuth, tamper(hs(nil)), AuthSignature},
		{"HS256 over the RSA public key", rsaAuth, sign(jwt.SigningMethodHS256, pubPEM, base(nil)), AuthSignature},
		{"HS256 over the RSA public key DER", rsaAuth, sign(jwt.SigningMethodHS256, pubDER, base(nil)), AuthSignature},
		{"RS256 valid", rsaAuth, sign(jwt.SigningMethodRS256, rsaKey, base(nil)), ""},
		{"not a JWT", hmacAuth, "not-a-jwt", AuthMalformed},
		{"bad base64", hmacAuth, "a.b.c", AuthMalformed},
		{"expired beyond leeway", hmacAuth, hs(func(c jwt.MapClaims) { c["exp"] = at(-leeway - time.Second) }), AuthExpired},
		{"expired within leeway", hmacAuth, hs(func(c jwt.MapClaims) { c["exp"] = at(-leeway + time.Second) }), ""},
		{"nbf beyond leeway", hmacAuth, hs(func(c jwt.MapClaims) { c["nbf"] = at(leeway + time.Second) }), AuthNotYetValid},
		{"nbf within leeway", hmacAuth, hs(func(c jwt.MapClaims) { c["nbf"] = at(leeway - time.Second) }), ""},
		{"no exp", hmacAuth, hs(func(c jwt.MapClaims) { delete(c, "exp") }), AuthClaims},
		{"no sub", hmacAuth, hs(func(c jwt.MapClaims) { delete(c, "sub") }), AuthClaims},
		{"empty sub", hmacAuth, hs(func(c jwt.MapClaims) { c["sub"] = "" }), AuthClaims},
		{"wrong iss", hmacAuth, hs(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }), AuthClaims},
		{"no iss", hmacAuth, hs(func(c jwt.MapClaims) { delete(c, "iss") }), AuthClaims},
		{"wrong aud", hmacAuth, hs(func(c jwt.MapClaims) { c["aud"] = "other" }), AuthClaims},
		{"aud list with wsd", hmacAuth, hs(func(c jwt.MapClaims) { c["aud"] = []string{"other", "wsd"} }), ""},
		{"topics not an object", hmacAuth, hs(func(c jwt.MapClaims) { c["topics"] = "everything" }), AuthClaims},
		{"topics bad pattern", hmacAuth, hs(func(c jwt.MapClaims) { c["topics"] = map[string]any{"sub": []string{"a b"}} }), AuthClaims},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id, got, err := tt.auth.verify(tt.tok)
			if got != tt.want {
				t.Fatalf("verify = %q (%v), want %q", got, err, tt.want)
			}
			if (got == AuthSignature || got == AuthMalformed) && id.user != "" {
				t.Fatalf("unverified token reports user %q, want none", id.user)
			}
			if tt.want == "" {
				if id.user != "alice" {
					t.Fatalf("user %q, want alice", id.user)
				}
				if exp, _ := jwt.MapClaims(decodeClaims(t, tt.tok)).GetExpirationTime(); !id.expires.Equal(exp.Add(leeway)) {
					t.Fatalf("expires %v, want exp %v + leeway", id.expires, exp)
				}
			}
		})
	}
}

// tamper changes the first character of a token's signature.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	p := []byte(parts[2])
	if p[0] == 'A' {
		p[0] = 'B'
	} else {
		p[0] = 'A'
	}
	parts[2] = string(p)
	return strings.Join(parts, ".")
}

func decodeClaims(t testing.TB, tok string) map[string]any {
	t.Helper()
	c := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, c); err != nil {
		t.Fatalf("decode %q: %v", tok, err)
	}
	return c
}

// TestRequestToken: the header and the query parameter are the only
// sources, one at a time.
func TestRequestToken(t *testing.T) {
	for _, tt := range []struct {
		name    string
		headers []string
		query   string
		want    string
		fail    AuthFailure
	}{
		{"header", []string{"Bearer abc.def.ghi"}, "", "abc.def.ghi", ""},
		{"header scheme case", []string{"bearer abc.def.ghi"}, "", "abc.def.ghi", ""},
		{"header extra spaces", []string{"  Bearer   abc.def.ghi "}, "", "abc.def.ghi", ""},
		{"query", nil, "access_token=abc.def.ghi", "abc.def.ghi", ""},
		{"query among others", nil, "x=1&access_token=abc.def.ghi", "abc.def.ghi", ""},
		{"none", nil, "", "", AuthMissing},
		{"other query only", nil, "token=abc", "", AuthMissing},
		{"header and query", []string{"Bearer abc"}, "access_token=abc", "", AuthMalformed},
		{"two headers", []string{"Bearer abc", "Bearer def"}, "", "", AuthMalformed},
		{"two query params", nil, "access_token=a&access_token=b", "", AuthMalformed},
		{"basic scheme", []string{"Basic dXNlcjpwYXNz"}, "", "", AuthMalformed},
		{"scheme only", []string{"Bearer"}, "", "", AuthMalformed},
		{"empty token", []string{"Bearer "}, "", "", AuthMalformed},
		{"empty query token", nil, "access_token=", "", AuthMalformed},
		{"space inside", []string{"Bearer abc def"}, "", "", AuthMalformed},
		{"too long", []string{"Bearer " + strings.Repeat("a", maxTokenBytes+1)}, "", "", AuthMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{Header: http.Header{}, URL: &url.URL{Path: "/ws/echo", RawQuery: tt.query}}
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			got, fail := requestToken(r)
			if got != tt.want || fail != tt.fail {
				t.Fatalf("requestToken = %q, %q; want %q, %q", got, fail, tt.want, tt.fail)
			}
		})
	}
}

// TestTopicPatterns: the topics claim grants exact topics and prefixes,
// nothing when empty or absent, and refuses anything else.
func TestTopicPatterns(t *testing.T) {
	for _, tt := range []struct {
		name, claim, topic string
		sub, pub           bool
		bad                bool
	}{
		{name: "exact", claim: `{"sub":["chat"],"pub":["chat"]}`, topic: "chat", sub: true, pub: true},
		{name: "exact is not a prefix", claim: `{"sub":["chat"]}`, topic: "chat.room"},
		{name: "prefix", claim: `{"sub":["chat.*"],"pub":["chat.*"]}`, topic: "chat.room", sub: true, pub: true},
		{name: "prefix needs its dot", claim: `{"sub":["chat.*"]}`, topic: "chatroom"},
		{name: "prefix matches the bare prefix", claim: `{"sub":["chat.*"]}`, topic: "chat.", sub: true},
		{name: "star is everything", claim: `{"sub":["*"]}`, topic: "anything", sub: true},
		{name: "sub without pub", claim: `{"sub":["news"]}`, topic: "news", sub: true},
		{name: "pub without sub", claim: `{"pub":["news"]}`, topic: "news", pub: true},
		{name: "no match", claim: `{"sub":["a","b.*"],"pub":["c"]}`, topic: "d"},
		{name: "empty lists", claim: `{"sub":[],"pub":[]}`, topic: "a"},
		{name: "empty object", claim: `{}`, topic: "a"},
		{name: "absent", claim: ``, topic: "a"},
		{name: "null", claim: `null`, topic: "a"},
		{name: "not an object", claim: `["a"]`, bad: true},
		{name: "not a list", claim: `{"sub":"a"}`, bad: true},
		{name: "not strings", claim: `{"sub":[1]}`, bad: true},
		{name: "unknown field", claim: `{"sub":["a"],"admin":true}`, bad: true},
		{name: "star inside", claim: `{"sub":["a*b"]}`, bad: true},
		{name: "double star", claim: `{"sub":["a.**"]}`, bad: true},
		{name: "bad character", claim: `{"pub":["a/b"]}`, bad: true},
		{name: "empty pattern", claim: `{"sub":[""]}`, bad: true},
		{name: "dot dot", claim: `{"sub":[".."]}`, bad: true},
		{name: "too long", claim: `{"sub":["` + strings.Repeat("a", 129) + `"]}`, bad: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := parseTopics(json.RawMessage(tt.claim))
			if (err != nil) != tt.bad {
				t.Fatalf("parseTopics(%s) error %v, want error %v", tt.claim, err, tt.bad)
			}
			if tt.bad {
				return
			}
			if got := matchTopic(tr.Sub, tt.topic); got != tt.sub {
				t.Errorf("sub right on %q = %v, want %v", tt.topic, got, tt.sub)
			}
			if got := matchTopic(tr.Pub, tt.topic); got != tt.pub {
				t.Errorf("pub right on %q = %v, want %v", tt.topic, got, tt.pub)
			}
		})
	}
}

// TestAuthConfig: auth.mode jwt needs exactly one key source, and every
// error names its key.
func TestAuthConfig(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		mut  func(*AuthConfig)
		want string // substring of New's error; "": valid
	}{
		{"none", func(a *AuthConfig) {}, ""},
		{"bad mode", func(a *AuthConfig) { a.Mode = "oauth" }, "auth.mode: "},
		{"jwt without key", func(a *AuthConfig) { a.Mode = AuthJWT }, "auth.jwt.hmac_secret: auth.mode jwt needs exactly one key source"},
		{"jwt with two keys", func(a *AuthConfig) {
			a.Mode, a.JWT.HMACSecret, a.JWT.JWKSURL = AuthJWT, testSecret, "https://idp.example/jwks"
		}, "auth.jwt.jwks_url: auth.mode jwt needs exactly one key source, got auth.jwt.hmac_secret and auth.jwt.jwks_url"},
		{"short secret", func(a *AuthConfig) { a.Mode, a.JWT.HMACSecret = AuthJWT, "short" }, "auth.jwt.hmac_secret: must be at least 32 bytes"},
		{"secret", func(a *AuthConfig) { a.Mode, a.JWT.HMACSecret = AuthJWT, testSecret }, ""},
		{"secret file", func(a *AuthConfig) { a.Mode, a.JWT.HMACSecretFile = AuthJWT, good }, ""},
		{"missing secret file", func(a *AuthConfig) { a.Mode, a.JWT.HMACSecretFile = AuthJWT, filepath.Join(dir, "nope") }, "auth.jwt.hmac_secret_file: open"},
		{"short secret file", func(a *AuthConfig) { a.Mode, a.JWT.HMACSecretFile = AuthJWT, short }, "auth.jwt.hmac_secret_file: " + short + " holds 5 bytes"},
		{"jwks not http", func(a *AuthConfig) { a.Mode, a.JWT.JWKSURL = AuthJWT, "file:///etc/keys" }, "auth.jwt.jwks_url: must be an http"},
		{"negative leeway", func(a *AuthConfig) { a.JWT.Leeway = -time.Second }, "auth.jwt.leeway: must be >= 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.mut(&cfg.Auth)
			_, err := New(cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New: %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	cfg := testConfig()
	cfg.Limits.MaxConnectionsPerUser = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "limits.max_connections_per_user: ") {
		t.Fatalf("Validate with max_connections_per_user -1: %v, want an error naming the key", err)
	}
}

// TestSecretFileTrimmed: the key read from a file loses its final
// newline, so a token signed with the bare secret verifies.
func TestSecretFileTrimmed(t *testing.T) {
	f := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(f, []byte(testSecret+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := newAuthenticator(AuthConfig{Mode: AuthJWT, JWT: JWTConfig{HMACSecretFile: f}})
	if err != nil {
		t.Fatal(err)
	}
	if _, fail, err := a.verify(mint(t, claimsFor("alice", nil))); fail != "" {
		t.Fatalf("token signed with the file's secret: %q (%v), want accepted", fail, err)
	}
}

// TestTickIntervalHonoursLeeway: with auth.mode jwt the sweep runs at
// least four times per leeway, so expiry is enforced within a quarter
// of it.
func TestTickIntervalHonoursLeeway(t *testing.T) {
	c := testConfig()
	jwtConfig(&c)
	c.Auth.JWT.Leeway = 400 * time.Millisecond
	if got := tickInterval(&c); got != 100*time.Millisecond {
		t.Fatalf("tickInterval with leeway 400ms = %v, want 100ms", got)
	}
	c.Auth.Mode = AuthNone
	if got := tickInterval(&c); got != time.Second {
		t.Fatalf("tickInterval without auth = %v, want 1s (the leeway must not count)", got)
	}
}
