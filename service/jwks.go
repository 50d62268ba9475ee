package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"golang.org/x/time/rate"
)

// JWKS timing. Variables, not constants, so that tests can shorten them;
// change them only before Serve.
var (
	// jwksRefreshInterval is how often the JWK Set is fetched again in
	// the background (rotation, revocation).
	jwksRefreshInterval = time.Hour
	// jwksUnknownKIDEvery is the shortest gap between refreshes that a
	// token with an unknown kid triggers: a client inventing kids cannot
	// make wsd hammer the identity provider.
	jwksUnknownKIDEvery = time.Minute
	// jwksTimeout bounds one fetch, and an upgrade's wait for the
	// unknown-kid limiter (an upgrade that would wait longer is refused
	// at once).
	jwksTimeout = 5 * time.Second
)

// startJWKS fetches auth.jwt.jwks_url and starts its background refresh,
// which runs until ctx is done. It fails, naming the key, when the first
// fetch fails or yields no RSA, EC or Ed25519 public key: wsd would
// otherwise start and refuse every client. A failed later refresh keeps
// the keys already fetched (logged at warn).
func (a *authenticator) startJWKS(ctx context.Context, log *slog.Logger) error {
	u := a.cfg.JWKSURL
	failFirst := false
	k, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{u}, keyfunc.Override{
		// Hourly fetches need no idle connection (nor its goroutines).
		Client:                    &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyFromEnvironment}},
		HTTPTimeout:               jwksTimeout,
		NoErrorReturnFirstHTTPReq: &failFirst,
		RateLimitWaitMax:          jwksTimeout,
		RefreshInterval:           jwksRefreshInterval,
		RefreshUnknownKID:         rate.NewLimiter(rate.Every(jwksUnknownKIDEvery), 1),
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(ctx context.Context, err error) {
				log.WarnContext(ctx, "JWKS refresh failed; keeping the keys already fetched", "url", u, "error", err)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("auth.jwt.jwks_url: %s: %w", u, err)
	}
	jwks, err := k.Storage().KeyReadAll(ctx)
	if err != nil {
		return fmt.Errorf("auth.jwt.jwks_url: %s: %w", u, err)
	}
	usable := 0
	for _, j := range jwks {
		switch j.Key().(type) {
		case *rsa.PublicKey, *rsa.PrivateKey, *ecdsa.PublicKey, *ecdsa.PrivateKey, ed25519.PublicKey, ed25519.PrivateKey:
			usable++
		}
	}
	if usable == 0 {
		return fmt.Errorf("auth.jwt.jwks_url: %s holds no usable key (RSA, EC or Ed25519; %d keys in all)", u, len(jwks))
	}
	a.keyfunc = k.Keyfunc
	log.Info("JWKS loaded", "url", u, "keys", usable)
	return nil
}
