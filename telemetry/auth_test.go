package telemetry

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/codes"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

const authSecret = "wsd-telemetry-secret-0123456789ab"

func jwtService(c *service.Config) {
	c.Auth.Mode = service.AuthJWT
	c.Auth.JWT.HMACSecret = authSecret
}

func bearerFor(t testing.TB, user string) http.Header {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "exp": time.Now().Add(time.Hour).Unix(), "topics": map[string][]string{"sub": {"t"}},
	}).SignedString([]byte(authSecret))
	if err != nil {
		t.Fatal(err)
	}
	return http.Header{"Authorization": {"Bearer " + tok}}
}

// TestAuthFailureMetrics: wsd.auth.failures exports every reason at zero
// from the start, counts a refused token and a missing right by reason,
// and the refused upgrades keep their ws.upgrade.rejected span (401,
// 403, not errors).
func TestAuthFailureMetrics(t *testing.T) {
	f := start(t, fixtureOpts{svc: jwtService})
	rm := f.collect(t)
	for _, r := range service.AuthFailures {
		if v, ok := intValue(rm, "wsd.auth.failures", keyAuthReason.String(string(r))); !ok || v != 0 {
			t.Errorf("wsd.auth.failures{%s} before any failure = %d (exported %v), want 0, exported", r, v, ok)
		}
	}
	if status := upgradeStatus(t, f.wsURL("/ws/echo"), nil); status != http.StatusUnauthorized {
		t.Fatalf("no token: status %d, want 401", status)
	}
	if status := upgradeStatus(t, f.wsURL("/ws/topics/other"), bearerFor(t, "alice")); status != http.StatusForbidden {
		t.Fatalf("topic without right: status %d, want 403", status)
	}
	rm = f.collect(t)
	for r, want := range map[service.AuthFailure]int64{service.AuthMissing: 1, service.AuthTopicForbidden: 1, service.AuthSignature: 0} {
		if v, _ := intValue(rm, "wsd.auth.failures", keyAuthReason.String(string(r))); v != want {
			t.Errorf("wsd.auth.failures{%s} = %d, want %d", r, v, want)
		}
	}
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(f.endedSpans(spanRejected)); n != 2 {
			return fmt.Errorf("%d rejected spans, want 2", n)
		}
		return nil
	})
	for _, s := range f.endedSpans(spanRejected) {
		a := attrs(s.Attributes())
		reason, status := a[keyRejectReason].AsString(), a[keyHTTPStatus].AsInt64()
		if !(reason == "unauthorized" && status == 401) && !(reason == "forbidden" && status == 403) {
			t.Errorf("rejected span reason %q status %d, want unauthorized/401 or forbidden/403", reason, status)
		}
	}
}

// TestEndUserID: the session span carries enduser.id only with
// record_user_id.
func TestEndUserID(t *testing.T) {
	for _, record := range []bool{false, true} {
		t.Run(fmt.Sprint("record_user_id=", record), func(t *testing.T) {
			f := start(t, fixtureOpts{svc: jwtService, tel: func(c *Config) { c.RecordUserID = record }})
			c := wstest.MustDialRaw(t, f.wsURL("/ws/echo"), wstest.WithHeader(bearerFor(t, "alice")))
			if _, err := c.CloseHandshake(1000, "bye"); err != nil {
				t.Fatal(err)
			}
			span := f.waitSpan(t, spanSession)
			v, ok := attrs(span.Attributes())[keyEndUserID]
			if ok != record || (record && v.AsString() != "alice") {
				t.Fatalf("enduser.id = %q (present %v), want present %v with alice", v.AsString(), ok, record)
			}
		})
	}
}

// TestAuthCloseSpanStatus: an expired token's 4001 is the session's
// planned end (unset status); a publish without the right (1008) is an
// error.
func TestAuthCloseSpanStatus(t *testing.T) {
	if c, d := spanStatus(service.CloseInfo{Code: service.CloseTokenExpired, Reason: "token expired", Initiator: service.InitiatorServer}); c != codes.Unset {
		t.Errorf("4001 span status %v %q, want unset", c, d)
	}
	if c, _ := spanStatus(service.CloseInfo{Code: service.ClosePolicyViolation, Reason: "publish forbidden", Initiator: service.InitiatorServer}); c != codes.Error {
		t.Errorf("1008 publish forbidden span status %v, want error", c)
	}
}
