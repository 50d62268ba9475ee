package service

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsd-dev/wsd/internal/wstest"
)

func bearer(tok string) wstest.DialOption {
	return wstest.WithHeader(http.Header{"Authorization": {"Bearer " + tok}})
}

// dialStatus upgrades and returns the status and WWW-Authenticate; a
// 101 connection is closed at cleanup.
func dialStatus(t testing.TB, url string, opts ...wstest.DialOption) (int, string) {
	t.Helper()
	c, resp, err := wstest.DialRaw(url, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Cleanup(func() { _ = c.Close() })
	}
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

// TestAuthUpgrade: over real sockets, every refused token gets 401 with
// the RFC 6750 challenge before the upgrade, a topic without the sub
// right gets 403, and valid tokens (header or query) upgrade; failures
// are counted by reason, logged with sub and reason, and the token is
// never logged.
func TestAuthUpgrade(t *testing.T) {
	logBuf := &wstest.SyncBuffer{}
	ts := runServer(t, jwtConfig, WithLogger(slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	rights := map[string][]string{"sub": {"news", "chat.*"}, "pub": {"chat.*"}}
	valid := mint(t, claimsFor("alice", rights))
	expired := mint(t, jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(-time.Hour).Unix()})
	early := mint(t, jwt.MapClaims{"sub": "carol", "exp": time.Now().Add(2 * time.Hour).Unix(), "nbf": time.Now().Add(time.Hour).Unix()})
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claimsFor("mallory", rights)).SignedString([]byte("not-the-server-secret-0123456789"))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claimsFor("mallory", rights)).SignedString(jwt.UnsafeAllowNoneSignatureType)

	const challenge = `Bearer error="invalid_token"`
	for _, tt := range []struct {
		name   string
		path   string
		opts   []wstest.DialOption
		status int
		www    string
	}{
		{"echo, header", "/ws/echo", []wstest.DialOption{bearer(valid)}, http.StatusSwitchingProtocols, ""},
		{"echo, query", "/ws/echo?access_token=" + valid, nil, http.StatusSwitchingProtocols, ""},
		{"topic exact", "/ws/topics/news", []wstest.DialOption{bearer(valid)}, http.StatusSwitchingProtocols, ""},
		{"topic prefix, query", "/ws/topics/chat.room?access_token=" + valid, nil, http.StatusSwitchingProtocols, ""},
		{"missing", "/ws/echo", nil, http.StatusUnauthorized, challenge},
		{"missing on a topic", "/ws/topics/news", nil, http.StatusUnauthorized, challenge},
		{"malformed", "/ws/echo", []wstest.DialOption{bearer("garbage")}, http.StatusUnauthorized, challenge},
		{"header and query", "/ws/echo?access_token=" + valid, []wstest.DialOption{bearer(valid)}, http.StatusUnauthorized, challenge},
		{"forged", "/ws/echo", []wstest.DialOption{bearer(forged)}, http.StatusUnauthorized, challenge},
		{"alg none", "/ws/echo", []wstest.DialOption{bearer(none)}, http.StatusUnauthorized, challenge},
		{"expired", "/ws/echo", []wstest.DialOption{bearer(expired)}, http.StatusUnauthorized, challenge},
		{"not yet valid", "/ws/echo", []wstest.DialOption{bearer(early)}, http.StatusUnauthorized, challenge},
		{"topic without right", "/ws/topics/sports", []wstest.DialOption{bearer(valid)}, http.StatusForbidden, `Bearer error="insufficient_scope"`},
		{"prefix is not the topic", "/ws/topics/chatroom", []wstest.DialOption{bearer(valid)}, http.StatusForbidden, `Bearer error="insufficient_scope"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, www := dialStatus(t, ts.wsURL(tt.path), tt.opts...)
			if status != tt.status || www != tt.www {
				t.Fatalf("GET %s: %d WWW-Authenticate %q, want %d %q", tt.path, status, www, tt.status, tt.www)
			}
		})
	}

	snap := ts.obs.snapshot()
	wantAuth := map[AuthFailure]int{AuthMissing: 2, AuthMalformed: 2, AuthSignature: 2, AuthExpired: 1, AuthNotYetValid: 1, AuthTopicForbidden: 2}
	if fmt.Sprint(snap.auth) != fmt.Sprint(wantAuth) {
		t.Errorf("auth failures %v, want %v", snap.auth, wantAuth)
	}
	if snap.rejected[RejectUnauthorized] != 8 || snap.rejected[RejectForbidden] != 2 {
		t.Errorf("rejected %v, want unauthorized 8, forbidden 2", snap.rejected)
	}
	for _, u := range snap.users {
		if u != "alice" {
			t.Errorf("a session opened for user %q, want only alice's (users %v)", u, snap.users)
		}
	}
	logs := logBuf.String()
	for _, tok := range []string{valid, expired, early, forged, none} {
		sig := tok[strings.LastIndexByte(tok, '.')+1:]
		if sig != "" && strings.Contains(logs, sig) {
			t.Errorf("the log holds a token signature %q:\n%s", sig, logs)
		}
	}
	if strings.Contains(logs, "mallory") {
		t.Errorf("the log names the sub of a token whose signature failed (unverified, client-chosen):\n%s", logs)
	}
	for _, want := range []string{"reason=expired", "sub=bob", "reason=topic_forbidden", "sub=alice", "reason=missing"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
}

// TestAuthEcho: a session upgraded with a token works as without auth.
func TestAuthEcho(t *testing.T) {
	ts := runServer(t, jwtConfig)
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(mint(t, claimsFor("alice", nil))))
	if err := c.Echo([]byte("hello")); err != nil {
		t.Fatalf("echo with a valid token: %v", err)
	}
}

// TestPublishForbidden: a message on a topic the token may not publish
// to closes the session with 1008 "publish forbidden", counted once.
func TestPublishForbidden(t *testing.T) {
	ts := runServer(t, jwtConfig)
	reader := wstest.MustDialRaw(t, ts.wsURL("/ws/topics/room"), bearer(mint(t, claimsFor("reader", map[string][]string{"sub": {"room"}, "pub": {"other"}}))))
	if err := reader.WriteFrame(wstest.OpText, []byte("forbidden")); err != nil {
		t.Fatal(err)
	}
	code, err := reader.ReadUntilClose(10 * time.Second)
	if err != nil || code != ClosePolicyViolation {
		t.Fatalf("publish without the right: close %d (%v), want 1008", code, err)
	}
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		return expectClose(ts, ClosePolicyViolation, reasonPubForbidden, InitiatorServer)
	})
	if n := ts.obs.snapshot().auth[AuthPublishForbidden]; n != 1 {
		t.Errorf("publish_forbidden count %d, want 1", n)
	}
}

// TestPublishForbiddenNotFannedOut: the refused message reaches no
// subscriber: the subscriber's first message is the next allowed one.
func TestPublishForbiddenNotFannedOut(t *testing.T) {
	ts := runServer(t, jwtConfig)
	url := ts.wsURL("/ws/topics/room")
	sub := wstest.MustDialRaw(t, url, bearer(mint(t, claimsFor("sub", map[string][]string{"sub": {"room"}}))))
	bad := wstest.MustDialRaw(t, url, bearer(mint(t, claimsFor("bad", map[string][]string{"sub": {"room"}}))))
	good := wstest.MustDialRaw(t, url, bearer(mint(t, claimsFor("good", map[string][]string{"sub": {"room"}, "pub": {"room"}}))))
	waitStats(t, ts, "3 subscribers", func(st Stats) bool { return st.Subscribers == 3 })
	if err := bad.WriteFrame(wstest.OpText, []byte("forbidden")); err != nil {
		t.Fatal(err)
	}
	if code, err := bad.ReadUntilClose(10 * time.Second); err != nil || code != ClosePolicyViolation {
		t.Fatalf("publish without the right: close %d (%v), want 1008", code, err)
	}
	if err := good.WriteFrame(wstest.OpText, []byte("allowed")); err != nil {
		t.Fatal(err)
	}
	f, err := sub.ReadFrame(10 * time.Second)
	for err == nil && f.Opcode != wstest.OpText {
		f, err = sub.ReadFrame(10 * time.Second)
	}
	if err != nil || string(f.Payload) != "allowed" {
		t.Fatalf("subscriber's first message %q (%v), want \"allowed\" (the forbidden one must not be fanned out)", f.Payload, err)
	}
}

// TestTokenExpiresDuringSession: at exp plus leeway the housekeeping
// sweep closes the session with 4001 "token expired".
func TestTokenExpiresDuringSession(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		jwtConfig(c)
		c.Auth.JWT.Leeway = 200 * time.Millisecond
	})
	// exp has one-second precision: two seconds ahead is still valid
	// when the upgrade is checked.
	tok := mint(t, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(2 * time.Second).Unix()})
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(tok))
	code, err := c.ReadUntilClose(20 * time.Second)
	if err != nil || code != CloseTokenExpired {
		t.Fatalf("session past its token's exp: close %d (%v), want 4001", code, err)
	}
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		return expectClose(ts, CloseTokenExpired, reasonTokenExpired, InitiatorServer)
	})
	if got := CloseCodeLabel(CloseTokenExpired); got != "4001" {
		t.Errorf("CloseCodeLabel(4001) = %q, want 4001", got)
	}
}

// TestMaxConnectionsPerUser: the per-user cap answers 429 above it,
// counts users in user_entries, and is released exactly on close.
func TestMaxConnectionsPerUser(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		jwtConfig(c)
		c.Limits.MaxConnectionsPerUser = 2
	})
	alice := mint(t, claimsFor("alice", map[string][]string{"sub": {"t"}}))
	bob := mint(t, claimsFor("bob", nil))
	a1 := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(alice))
	wstest.MustDialRaw(t, ts.wsURL("/ws/topics/t"), bearer(alice))
	if status, _ := dialStatus(t, ts.wsURL("/ws/echo"), bearer(alice)); status != http.StatusTooManyRequests {
		t.Fatalf("alice's third connection: %d, want 429", status)
	}
	wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(bob))
	if st := fetchStats(t, ts); st.UserEntries != 2 || st.Connections != 3 {
		t.Fatalf("stats: user_entries %d connections %d, want 2 and 3", st.UserEntries, st.Connections)
	}
	if n := ts.obs.snapshot().rejected[RejectPerUser]; n != 1 {
		t.Errorf("per_user rejections %d, want 1", n)
	}
	if _, err := a1.CloseHandshake(1000, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitStats(t, ts, "2 connections", func(st Stats) bool { return st.Connections == 2 })
	wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(alice))
	if status, _ := dialStatus(t, ts.wsURL("/ws/echo"), bearer(alice)); status != http.StatusTooManyRequests {
		t.Fatalf("alice's third connection after a close and a reconnect: %d, want 429", status)
	}
}

// TestPerUserReleasedOnRefusal: a user slot claimed by an upgrade that
// another cap refuses is given back at once.
func TestPerUserReleasedOnRefusal(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		jwtConfig(c)
		c.Limits.MaxConnectionsPerUser = 1
		c.Limits.MaxConnectionsPerIP = 1
	})
	wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(mint(t, claimsFor("alice", nil))))
	for range 3 {
		if status, _ := dialStatus(t, ts.wsURL("/ws/echo"), bearer(mint(t, claimsFor("bob", nil)))); status != http.StatusTooManyRequests {
			t.Fatalf("bob over the per-IP cap: %d, want 429", status)
		}
	}
	if st := fetchStats(t, ts); st.UserEntries != 1 {
		t.Fatalf("user_entries %d after refused upgrades, want 1 (alice only)", st.UserEntries)
	}
	if n := ts.obs.snapshot().rejected; n[RejectPerIP] != 3 || n[RejectPerUser] != 0 {
		t.Fatalf("rejections %v, want per_ip 3", n)
	}
}

// TestAuthNoneUnchanged: without auth a token is ignored and nobody is
// refused for lack of one.
func TestAuthNoneUnchanged(t *testing.T) {
	ts := runServer(t, nil)
	if status, _ := dialStatus(t, ts.wsURL("/ws/topics/x")); status != http.StatusSwitchingProtocols {
		t.Fatalf("topic without auth: %d, want 101", status)
	}
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer("anything"))
	if err := c.Echo([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := ts.obs.snapshot().auth; len(got) != 0 {
		t.Fatalf("auth failures %v with auth.mode none, want none", got)
	}
}

// TestBadTokenFlood: 10 000 upgrade attempts with bad tokens, missing
// rights or over the per-user cap leave nothing behind: each is refused
// with its status and counted once, and sessions, per-IP and per-user
// entries, handshakes, descriptors and goroutines are back to baseline;
// the legitimate session open throughout still works.
func TestBadTokenFlood(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		jwtConfig(c)
		c.Limits.MaxConnectionsPerUser = 1
	})
	alice := mint(t, claimsFor("alice", map[string][]string{"sub": {"room"}}))
	live := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), bearer(alice))
	base := fetchStats(t, ts)
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claimsFor("mallory", nil)).SignedString([]byte("not-the-server-secret-0123456789"))
	attempts := []struct {
		path   string
		opts   []wstest.DialOption
		status int
	}{
		{"/ws/echo", nil, http.StatusUnauthorized},
		{"/ws/echo", []wstest.DialOption{bearer("garbage")}, http.StatusUnauthorized},
		{"/ws/echo", []wstest.DialOption{bearer(forged)}, http.StatusUnauthorized},
		{"/ws/echo?access_token=" + mint(t, jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(-time.Hour).Unix()}), nil, http.StatusUnauthorized},
		{"/ws/topics/secret", []wstest.DialOption{bearer(alice)}, http.StatusForbidden},
		{"/ws/topics/room", []wstest.DialOption{bearer(alice)}, http.StatusTooManyRequests},
	}
	const total, workers = 10000, 8
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				a := attempts[i%len(attempts)]
				c, resp, err := wstest.DialRaw(ts.wsURL(a.path), a.opts...)
				if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
					c.Close()
				}
				if err != nil || resp.StatusCode != a.status {
					errs <- fmt.Errorf("attempt %d on %s: %v %v, want %d", i, a.path, err, resp, a.status)
					return
				}
			}
		}()
	}
	func() {
		defer close(jobs)
		for i := range total {
			select {
			case jobs <- i:
			case err := <-errs:
				t.Fatal(err)
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	wstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		st := fetchStats(t, ts)
		if st.Connections != 1 || st.IPEntries != 1 || st.UserEntries != 1 || st.Handshakes != 0 {
			return fmt.Errorf("stats after the flood: %+v, want the one live session only", st)
		}
		if st.OpenFDs > base.OpenFDs+2 || st.Goroutines > base.Goroutines+2 {
			return fmt.Errorf("open_fds %d goroutines %d, baseline %d and %d", st.OpenFDs, st.Goroutines, base.OpenFDs, base.Goroutines)
		}
		return nil
	})
	want := map[int]int{}
	for i := range total {
		want[attempts[i%len(attempts)].status]++
	}
	snap := ts.obs.snapshot()
	if got := snap.rejected; got[RejectUnauthorized] != want[http.StatusUnauthorized] ||
		got[RejectForbidden] != want[http.StatusForbidden] || got[RejectPerUser] != want[http.StatusTooManyRequests] {
		t.Errorf("rejections %v, want unauthorized %d, forbidden %d, per_user %d", got,
			want[http.StatusUnauthorized], want[http.StatusForbidden], want[http.StatusTooManyRequests])
	}
	if sum := snap.auth[AuthMissing] + snap.auth[AuthMalformed] + snap.auth[AuthSignature] + snap.auth[AuthExpired] +
		snap.auth[AuthTopicForbidden]; sum != want[http.StatusUnauthorized]+want[http.StatusForbidden] || len(snap.auth) != 5 {
		t.Errorf("auth failures %v, want %d in all over 5 reasons", snap.auth, want[http.StatusUnauthorized]+want[http.StatusForbidden])
	}
	if err := live.Echo([]byte("still here")); err != nil {
		t.Fatalf("the live session after the flood: %v", err)
	}
	if _, err := live.CloseHandshake(1000, ""); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ts)
}
