package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// jwksServer is an identity provider's JWK Set endpoint: it serves the
// public halves of the keys set with serve, or 503 while down, and
// counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	down    bool
	fetches atomic.Int64
}

func newJWKSServer(t testing.TB) *jwksServer {
	js := &jwksServer{body: []byte(`{"keys":[]}`)}
	js.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		js.fetches.Add(1)
		js.mu.Lock()
		body, down := js.body, js.down
		js.mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(js.Close)
	return js
}

// serve publishes the public keys of signers.
func (js *jwksServer) serve(t testing.TB, signers ...*signer) {
	t.Helper()
	var keys []jwkset.JWKMarshal
	for _, s := range signers {
		jwk, err := jwkset.NewJWKFromKey(s.public, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: s.kid, ALG: jwkset.ALG(s.method.Alg())}})
		if err != nil {
			t.Fatalf("JWK for %s: %v", s.kid, err)
		}
		keys = append(keys, jwk.Marshal())
	}
	body, err := json.Marshal(jwkset.JWKSMarshal{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	js.mu.Lock()
	js.body, js.down = body, false
	js.mu.Unlock()
}

func (js *jwksServer) setDown() {
	js.mu.Lock()
	js.down = true
	js.mu.Unlock()
}

// signer is an asymmetric key of the identity provider.
type signer struct {
	kid     string
	method  jwt.SigningMethod
	private any
	public  any
}

func rsaSigner(t testing.TB, kid string) *signer {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, method: jwt.SigningMethodRS256, private: k, public: &k.PublicKey}
}

func edSigner(t testing.TB, kid string) *signer {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, method: jwt.SigningMethodEdDSA, private: priv, public: pub}
}

func (s *signer) mint(t testing.TB, user string) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, claimsFor(user, nil))
	tok.Header["kid"] = s.kid
	str, err := tok.SignedString(s.private)
	if err != nil {
		t.Fatalf("sign with %s: %v", s.kid, err)
	}
	return str
}

// withJWKSTiming shortens the JWKS refresh for one test (the tests that
// change it do not run in parallel).
func withJWKSTiming(t testing.TB, refresh, unknownKID time.Duration) {
	oldR, oldU := jwksRefreshInterval, jwksUnknownKIDEvery
	jwksRefreshInterval, jwksUnknownKIDEvery = refresh, unknownKID
	t.Cleanup(func() { jwksRefreshInterval, jwksUnknownKIDEvery = oldR, oldU })
}

func jwksConfig(url string) func(*Config) {
	return func(c *Config) {
		c.Auth.Mode = AuthJWT
		c.Auth.JWT.JWKSURL = url
	}
}

func expectStatus(t testing.TB, ts *testServer, tok string, want int, what string) {
	t.Helper()
	if status, _ := dialStatus(t, ts.wsURL("/ws/echo"), bearer(tok)); status != want {
		t.Fatalf("%s: status %d, want %d", what, status, want)
	}
}

// TestJWKSUnknownKIDRefresh: a token with a kid the JWK Set did not have
// at startup triggers one refresh and is accepted; a second unknown kid
// within jwksUnknownKIDEvery triggers no fetch and is refused at once.
// HS256 "signed" with the RSA public key is refused.
func TestJWKSUnknownKIDRefresh(t *testing.T) {
	withJWKSTiming(t, time.Hour, time.Hour)
	k1, k2 := rsaSigner(t, "k1"), edSigner(t, "k2")
	js := newJWKSServer(t)
	js.serve(t, k1)
	ts := runServer(t, jwksConfig(js.URL))
	expectStatus(t, ts, k1.mint(t, "alice"), http.StatusSwitchingProtocols, "RS256 token of the startup key")
	if n := js.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches after startup, want 1", n)
	}

	js.serve(t, k1, k2)
	expectStatus(t, ts, k2.mint(t, "alice"), http.StatusSwitchingProtocols, "EdDSA token of a key added after startup")
	if n := js.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after one unknown kid, want 2", n)
	}
	expectStatus(t, ts, edSigner(t, "k3").mint(t, "alice"), http.StatusUnauthorized, "token of a key the JWKS never had")
	if n := js.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after a second unknown kid within the limit, want still 2", n)
	}

	pub := k1.public.(*rsa.PublicKey)
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, claimsFor("mallory", nil))
	confused.Header["kid"] = "k1"
	forged, err := confused.SignedString([]byte(fmt.Sprintf("%x", pub.N.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, ts, forged, http.StatusUnauthorized, "HS256 token naming the RSA key")
	if n := ts.obs.snapshot().auth[AuthSignature]; n != 2 {
		t.Errorf("signature failures %d, want 2", n)
	}
}

// TestJWKSRemovedKey: a key removed from the JWK Set is refused after
// the next background refresh; the remaining key keeps working.
func TestJWKSRemovedKey(t *testing.T) {
	withJWKSTiming(t, 50*time.Millisecond, time.Hour)
	k1, k2 := rsaSigner(t, "k1"), edSigner(t, "k2")
	js := newJWKSServer(t)
	js.serve(t, k1, k2)
	ts := runServer(t, jwksConfig(js.URL))
	old := k1.mint(t, "alice")
	expectStatus(t, ts, old, http.StatusSwitchingProtocols, "token of k1 before its removal")

	js.serve(t, k2)
	wstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c, resp, err := wstest.DialRaw(ts.wsURL("/ws/echo"), bearer(old))
		if err != nil {
			return err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			c.Close()
			return fmt.Errorf("token of removed key k1 still accepted (%d fetches)", js.fetches.Load())
		}
		if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("token of removed key k1: %d, want 401", resp.StatusCode)
		}
		return nil
	})
	expectStatus(t, ts, k2.mint(t, "alice"), http.StatusSwitchingProtocols, "token of the remaining key k2")
}

// TestJWKSEndpointDown: while the JWK Set endpoint fails, the keys
// already fetched keep working, and each failed refresh is logged.
func TestJWKSEndpointDown(t *testing.T) {
	withJWKSTiming(t, 50*time.Millisecond, time.Hour)
	k1 := rsaSigner(t, "k1")
	js := newJWKSServer(t)
	js.serve(t, k1)
	ts := runServer(t, jwksConfig(js.URL))
	js.setDown()
	before := js.fetches.Load()
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := js.fetches.Load(); n < before+2 {
			return fmt.Errorf("%d refreshes while down, want 2", n-before)
		}
		return nil
	})
	expectStatus(t, ts, k1.mint(t, "alice"), http.StatusSwitchingProtocols, "token of a fetched key while the endpoint is down")
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if len(ts.logs.find(slog.LevelWarn, "JWKS refresh failed; keeping the keys already fetched", nil)) == 0 {
			return fmt.Errorf("no warning for the failed refresh")
		}
		return nil
	})
}

// TestJWKSStartupFails: Serve refuses to start, naming the key, when the
// JWK Set cannot be fetched or holds no usable key.
func TestJWKSStartupFails(t *testing.T) {
	withJWKSTiming(t, time.Hour, time.Hour)
	js := newJWKSServer(t)
	for _, tt := range []struct {
		name string
		prep func()
		want string
	}{
		{"empty set", func() { js.serve(t) }, "holds no usable key"},
		{"only an HMAC key", func() {
			js.mu.Lock()
			js.body, js.down = []byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}`), false
			js.mu.Unlock()
		}, "holds no usable key"},
		{"endpoint down", js.setDown, "503"},
		{"not JSON", func() {
			js.mu.Lock()
			js.body, js.down = []byte(`<html>`), false
			js.mu.Unlock()
		}, "decode"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.prep()
			cfg := testConfig()
			jwksConfig(js.URL)(&cfg)
			srv, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err = srv.Serve(ctx)
			if err == nil || !strings.HasPrefix(err.Error(), "auth.jwt.jwks_url: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Serve: %v, want an error naming auth.jwt.jwks_url with %q", err, tt.want)
			}
		})
	}
}
