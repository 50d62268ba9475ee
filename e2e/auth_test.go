//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsd-dev/wsd/chaos"
)

// authSecret is the scenario's HS256 key (auth.jwt.hmac_secret needs at
// least 32 bytes).
const authSecret = "e2e-auth-secret-0123456789abcdef-0123456789"

// mintToken signs claims for sub with rights over topics (nil: none)
// with key and method, expiring at exp.
func mintToken(t *testing.T, method jwt.SigningMethod, key any, sub string, exp time.Time, topics map[string][]string) string {
	t.Helper()
	c := jwt.MapClaims{"sub": sub, "exp": exp.Unix()}
	if topics != nil {
		c["topics"] = topics
	}
	tok, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		t.Fatalf("mint %s token: %v", method.Alg(), err)
	}
	return tok
}

// Scenario: authentication under a bad-token flood. With auth.mode jwt,
// clients holding valid tokens work (echo, a topic with sub/pub rights),
// a subscriber without the topic right gets 403 and a publish without the
// right closes with 1008; then 10 000 upgrade attempts with bad tokens
// (missing, malformed, bad signature, expired, alg none, an algorithm
// not configured) are each answered 401, leave nothing behind, and cost
// the server less CPU per attempt than an upgrade and close.
func TestAuthBadTokenFlood(t *testing.T) {
	const attempts, upgrades, workers = 10000, 2000, 32
	exp := time.Now().Add(time.Hour)
	rights := map[string][]string{"sub": {"auth.*"}, "pub": {"auth.*"}}
	good := mintToken(t, jwt.SigningMethodHS256, []byte(authSecret), "alice", exp, rights)
	s := startStack(t, "auth-bad-token-flood",
		fmt.Sprintf("auth.mode jwt (HS256): valid clients on echo and a topic, 403 on a topic without the right, 1008 on a publish without the right; %d upgrades with bad tokens (missing, malformed, bad signature, expired, alg none, HS384) at %d concurrent, each 401; server CPU per rejected attempt vs per upgrade+close (%d).", attempts, workers, upgrades),
		stackOpts{conns: workers + 16, warmToken: good, config: map[string]string{
			"auth.mode":            "jwt",
			"auth.jwt.hmac_secret": authSecret,
		}})
	ctx := s.ctx

	// (a) Valid tokens work; missing rights are refused.
	echo, err := chaos.Dial(ctx, s.target.EchoURL(), chaos.WithHeader("Authorization", "Bearer "+good))
	if err != nil {
		s.fatal("echo with a valid token: %v", err)
	}
	_ = echo.WriteMessage(chaos.OpText, []byte("hello"))
	_, msg, err := echo.ReadMessage()
	s.check("echo with a valid Bearer token echoes", err == nil && string(msg) == "hello", "hello", "%q (%v)", msg, err)
	_ = echo.CloseGracefully(2 * time.Second)

	sub, err := chaos.Dial(ctx, s.target.TopicURL("auth.room")+"?access_token="+good)
	if err != nil {
		s.fatal("subscribe with the right: %v", err)
	}
	pub, err := chaos.Dial(ctx, s.target.TopicURL("auth.room"), chaos.WithHeader("Authorization", "Bearer "+good))
	if err != nil {
		s.fatal("publisher with the right: %v", err)
	}
	_ = pub.WriteMessage(chaos.OpText, []byte("to-room"))
	got := make(chan string, 1)
	go func() {
		_, m, err := sub.ReadMessage()
		got <- fmt.Sprintf("%s%v", m, errOrEmpty(err))
	}()
	select {
	case m := <-got:
		s.check("a subscriber with the sub right receives a publish with the pub right", m == "to-room", "to-room", "%q", m)
	case <-time.After(10 * time.Second):
		s.check("a subscriber with the sub right receives a publish with the pub right", false, "to-room", "nothing within 10s")
	}
	_ = pub.CloseGracefully(2 * time.Second)
	_ = sub.CloseGracefully(2 * time.Second)

	_, err = chaos.Dial(ctx, s.target.TopicURL("other.room"), chaos.WithHeader("Authorization", "Bearer "+good))
	var he *chaos.HandshakeError
	s.check("a subscriber without the topic right gets 403", errors.As(err, &he) && he.Status == http.StatusForbidden, "HTTP 403", "%v", errOrEmpty(err))

	subOnly := mintToken(t, jwt.SigningMethodHS256, []byte(authSecret), "bob", exp, map[string][]string{"sub": {"auth.*"}})
	ro, err := chaos.Dial(ctx, s.target.TopicURL("auth.room"), chaos.WithHeader("Authorization", "Bearer "+subOnly))
	if err != nil {
		s.fatal("subscribe-only client: %v", err)
	}
	_ = ro.WriteMessage(chaos.OpText, []byte("not allowed"))
	code, _, err := ro.ReadUntilClose(10 * time.Second)
	s.check("a publish without the pub right closes with 1008", code == 1008, "1008", "%d (%v)", code, errOrEmpty(err))
	_ = ro.Close()

	// (b) The flood: every bad token answered 401, counted exactly.
	bad := []struct{ name, token string }{
		{"missing", ""},
		{"malformed", "not-a-jwt"},
		{"bad signature", mintToken(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdef-0123"), "mallory", exp, rights)},
		{"expired", mintToken(t, jwt.SigningMethodHS256, []byte(authSecret), "mallory", time.Now().Add(-time.Hour), rights)},
		{"alg none", mintToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "mallory", exp, rights)},
		{"HS384 (not configured)", mintToken(t, jwt.SigningMethodHS384, []byte(authSecret), "mallory", exp, rights)},
	}
	s.res.Fault("%d upgrade attempts with bad tokens (%d kinds, header and query), %d concurrent", attempts, len(bad), workers)
	httpURL := "http" + strings.TrimPrefix(s.target.EchoURL(), "ws")
	tr := &http.Transport{MaxConnsPerHost: workers, MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	floodCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()

	cpu0, err := s.wsd.CPUUsage(ctx)
	if err != nil {
		s.fatal("CPU reading: %v", err)
	}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		statuses = map[string]int{}
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= attempts {
					return
				}
				b := bad[i%int64(len(bad))]
				st := badUpgrade(floodCtx, hc, httpURL, b.token, i%2 == 0)
				mu.Lock()
				statuses[b.name+": "+st]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	cpu1, err := s.wsd.CPUUsage(ctx)
	if err != nil {
		s.fatal("CPU reading: %v", err)
	}
	tr.CloseIdleConnections()
	n401 := 0
	for _, b := range bad {
		n401 += statuses[b.name+": 401"]
	}
	s.check("every bad-token upgrade attempt is answered 401", n401 == attempts, fmt.Sprintf("%d × 401", attempts), "%d × 401 of %v", n401, statuses)

	// (c) The same server CPU measure for upgrades that succeed and close.
	upErrs := 0
	var upNext atomic.Int64
	for range workers {
		wg.Go(func() {
			for upNext.Add(1) <= upgrades {
				c, err := chaos.Dial(floodCtx, s.target.EchoURL(), chaos.WithHeader("Authorization", "Bearer "+good))
				if err != nil {
					mu.Lock()
					upErrs++
					mu.Unlock()
					continue
				}
				_ = c.CloseGracefully(2 * time.Second)
			}
		})
	}
	wg.Wait()
	cpu2, err := s.wsd.CPUUsage(ctx)
	if err != nil {
		s.fatal("CPU reading: %v", err)
	}
	s.check("every valid upgrade succeeds", upErrs == 0, "0 errors", "%d errors of %d", upErrs, upgrades)
	perRejected := (cpu1 - cpu0) / attempts
	perUpgrade := (cpu2 - cpu1) / upgrades
	s.res.Note("server CPU: %s for %d rejected attempts (%s each), %s for %d upgrades+close (%s each)",
		cpu1-cpu0, attempts, perRejected, cpu2-cpu1, upgrades, perUpgrade)
	s.check("a rejected attempt costs less server CPU than an upgrade+close", perRejected > 0 && perRejected < perUpgrade,
		fmt.Sprintf("0 < rejected < upgrade (%s)", perUpgrade), "rejected %s, upgrade %s", perRejected, perUpgrade)

	s.finish(20 * time.Second)
}

// badUpgrade sends one WebSocket upgrade request carrying token (none
// when empty) in the Authorization header or the access_token query, and
// returns the status code, or the error text.
func badUpgrade(ctx context.Context, hc *http.Client, url, token string, header bool) string {
	if token != "" && !header {
		url += "?access_token=" + token
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if token != "" && header {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := hc.Do(req)
	if err != nil {
		return "error"
	}
	_ = res.Body.Close()
	return fmt.Sprint(res.StatusCode)
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
