package service

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// TestAdmissionStatuses: every capacity and policy refusal is answered
// before the handshake with its HTTP status (and Retry-After where the
// client should retry), is reported to the observer with its reason, and
// leaves no reservation behind.
func TestAdmissionStatuses(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*Config)
		prep       func(*Server)
		hold       int // successful upgrades made first
		header     http.Header
		status     int
		retryAfter bool
		reason     RejectReason // "" for a successful upgrade
	}{
		{name: "max connections", mutate: func(c *Config) { c.Limits.MaxConnections = 2 },
			hold: 2, status: http.StatusServiceUnavailable, retryAfter: true, reason: RejectMaxConnections},
		{name: "per ip", mutate: func(c *Config) { c.Limits.MaxConnectionsPerIP = 2 },
			hold: 2, status: http.StatusTooManyRequests, reason: RejectPerIP},
		{name: "upgrade rate", mutate: func(c *Config) { c.Limits.UpgradeRate, c.Limits.UpgradeBurst = 0.01, 2 },
			hold: 2, status: http.StatusTooManyRequests, retryAfter: true, reason: RejectRate},
		{name: "disallowed origin", mutate: func(c *Config) { c.Limits.AllowedOrigins = []string{"https://app.example"} },
			header: http.Header{"Origin": {"https://evil.example"}}, status: http.StatusForbidden, reason: RejectOrigin},
		{name: "allowed origin", mutate: func(c *Config) { c.Limits.AllowedOrigins = []string{"https://app.example"} },
			header: http.Header{"Origin": {"https://app.example"}}, status: http.StatusSwitchingProtocols},
		{name: "allowed origin, other case", mutate: func(c *Config) { c.Limits.AllowedOrigins = []string{"https://app.example"} },
			header: http.Header{"Origin": {"HTTPS://App.Example"}}, status: http.StatusSwitchingProtocols},
		{name: "any origin", mutate: func(c *Config) { c.Limits.AllowedOrigins = []string{"*"} },
			header: http.Header{"Origin": {"https://evil.example"}}, status: http.StatusSwitchingProtocols},
		{name: "fd pressure", prep: func(s *Server) { s.fd.soft = 0 },
			status: http.StatusServiceUnavailable, retryAfter: true, reason: RejectFDPressure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := runServerWith(t, tt.mutate, tt.prep)
			url := ts.wsURL("/ws/echo")
			var held []*wstest.Conn
			for range tt.hold {
				c := wstest.MustDialRaw(t, url)
				held = append(held, c)
			}
			c, resp, err := wstest.DialRaw(url, wstest.WithHeader(tt.header))
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %s, want %d", resp.Status, tt.status)
			}
			ra := resp.Header.Get("Retry-After")
			if tt.retryAfter {
				if n, err := strconv.Atoi(ra); err != nil || n < 1 {
					t.Fatalf("Retry-After %q, want whole seconds >= 1", ra)
				}
			} else if ra != "" {
				t.Fatalf("Retry-After %q on a %d, want none", ra, tt.status)
			}
			snap := ts.obs.snapshot()
			if tt.reason == "" {
				c.Close()
				if len(snap.rejected) != 0 {
					t.Fatalf("rejections %v, want none", snap.rejected)
				}
			} else if len(snap.rejected) != 1 || snap.rejected[tt.reason] != 1 {
				t.Fatalf("rejections %v, want one %s", snap.rejected, tt.reason)
			}
			if tt.prep != nil { // fd pressure: readiness follows the guard
				if code := getStatus(t, ts.adminURL("/readyz")); code != http.StatusServiceUnavailable {
					t.Fatalf("/readyz %d under fd pressure, want 503", code)
				}
				if code := getStatus(t, ts.adminURL("/healthz")); code != http.StatusOK {
					t.Fatalf("/healthz %d under fd pressure, want 200", code)
				}
			}
			// Held connections still work and a refusal leaked nothing.
			for i, h := range held {
				if err := h.WriteFrame(wstest.OpText, []byte("still here")); err != nil {
					t.Fatalf("held %d: %v", i, err)
				}
				if f, err := h.ReadFrame(10 * time.Second); err != nil || string(f.Payload) != "still here" {
					t.Fatalf("held %d echo: %q %v", i, f.Payload, err)
				}
				h.Close()
			}
			waitIdle(t, ts)
		})
	}
}

// TestAdmissionPerIPIsPerAddress: the per-IP cap counts each source
// address separately (another loopback address still gets in).
func TestAdmissionPerIPIsPerAddress(t *testing.T) {
	ts := runServer(t, func(c *Config) { c.Limits.MaxConnectionsPerIP = 1 })
	url := ts.wsURL("/ws/echo")
	wstest.MustDialRaw(t, url)
	if _, resp, err := wstest.DialRaw(url); err != nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second from 127.0.0.1: %v %v, want 429", resp, err)
	}
	other := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, resp, err := wstest.DialRaw(url, wstest.WithDialer(other))
	if err != nil {
		t.Fatalf("dial from 127.0.0.2: %v", err)
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("first from 127.0.0.2: %s, want 101", resp.Status)
	}
	// 101 is written before the session is registered: poll.
	waitStats(t, ts, "2 ip entries and 2 connections", func(st Stats) bool { return st.IPEntries == 2 && st.Connections == 2 })
}

// TestAdmissionBadRequest: a request to a /ws path that is not a valid
// WebSocket upgrade, or names an invalid topic, gets 400.
func TestAdmissionBadRequest(t *testing.T) {
	ts := runServer(t, nil)
	addr := ts.Addr().String()
	long := strings.Repeat("a", 129)
	tests := []struct {
		name, req string
		status    int
	}{
		{"plain GET", "GET /ws/echo HTTP/1.1\r\nHost: wsd\r\n\r\n", 400},
		{"POST upgrade", strings.Replace(upgradeRequest("/ws/echo"), "GET", "POST", 1), 400},
		{"no key", strings.Replace(upgradeRequest("/ws/echo"), "Sec-WebSocket-Key", "X-Key", 1), 400},
		{"version 8", strings.Replace(upgradeRequest("/ws/echo"), "Version: 13", "Version: 8", 1), 400},
		{"empty topic", upgradeRequest("/ws/topics/"), 400},
		{"129-char topic", upgradeRequest("/ws/topics/" + long), 400},
		{"bad char", upgradeRequest("/ws/topics/a!b"), 400},
		{"slash", upgradeRequest("/ws/topics/a/b"), 400},
		{"escaped slash", upgradeRequest("/ws/topics/a%2Fb"), 400},
		{"space", upgradeRequest("/ws/topics/a%20b"), 400},
		{"non-ASCII", upgradeRequest("/ws/topics/caf%C3%A9"), 400},
		{"128-char topic", upgradeRequest("/ws/topics/" + long[:128]), 101},
		{"all allowed chars", upgradeRequest("/ws/topics/AZaz09._-"), 101},
	}
	want400 := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawHTTP(t, addr, tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %s (%q), want %d", resp.Status, body, tt.status)
			}
			if tt.status == 400 && !strings.HasPrefix(body, "wsd: ") {
				t.Fatalf("400 body %q, want a wsd explanation", body)
			}
		})
		if tt.status == 400 {
			want400++
		}
	}
	if got := ts.obs.snapshot().rejected; len(got) != 1 || got[RejectBadRequest] != want400 {
		t.Fatalf("rejections %v, want %d bad_request", got, want400)
	}
	waitIdle(t, ts)
}

// TestAdmissionDraining: a request that arrives while the server drains
// gets 503 + Retry-After, and /readyz is 503 meanwhile. The request is
// sent in two halves around the start of the shutdown: net/http keeps a
// connection that is mid-request while it closes the listener.
func TestAdmissionDraining(t *testing.T) {
	ts := runServer(t, nil)
	c, err := net.DialTimeout("tcp", ts.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	req := upgradeRequest("/ws/echo")
	if _, err := io.WriteString(c, req[:20]); err != nil {
		t.Fatal(err)
	}
	waitStats(t, ts, "1 handshake", func(st Stats) bool { return st.Handshakes == 1 })
	if code := getStatus(t, ts.adminURL("/readyz")); code != http.StatusOK {
		t.Fatalf("/readyz %d before shutdown, want 200", code)
	}
	waitStopped := stopInBackground(t, ts)
	wstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if code := getStatus(t, ts.adminURL("/readyz")); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz %d while draining, want 503", code)
		}
		return nil
	})
	if _, err := io.WriteString(c, req[20:]); err != nil {
		t.Fatal(err)
	}
	resp, body := readResponse(t, bufio.NewReader(c))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("while draining: %s Retry-After %q (%q), want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	if r := ts.obs.snapshot().rejected; r[RejectDraining] != 1 {
		t.Fatalf("rejections %v, want one draining", r)
	}
	waitStopped()
}

// TestAcceptRefusesOverHandshakeCap: raw TCP connections that never send
// a request are bounded by max_handshakes; the next one gets a canned 503
// at accept (never a hang), and a slot frees when one of them goes.
func TestAcceptRefusesOverHandshakeCap(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		c.Limits.MaxHandshakes = 3
		c.Limits.HandshakeTimeout = time.Minute // only the cap can act here
	})
	addr := ts.Addr().String()
	var idle []net.Conn
	for range 3 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	waitStats(t, ts, "3 handshakes", func(st Stats) bool { return st.Handshakes == 3 })
	resp, body := rawHTTP(t, addr, upgradeRequest("/ws/echo"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("over the cap: %s Retry-After %q (%q), want 503 Retry-After 1", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	if st := ts.Stats(); st.RefusedAtAcceptTotal != 1 || st.Handshakes != 3 {
		t.Fatalf("stats %+v, want 1 refused at accept and 3 handshakes", st)
	}
	idle[0].Close()
	waitUpgradeOK(t, ts.wsURL("/ws/echo")) // a slot freed
}

// TestAcceptRefusesAtDescriptorHardCap: above the guard's hard level the
// public listener answers 503 at accept, before reading a request.
func TestAcceptRefusesAtDescriptorHardCap(t *testing.T) {
	ts := runServerWith(t, nil, func(s *Server) { s.fd.hard = 0 })
	resp, body := rawHTTP(t, ts.Addr().String(), upgradeRequest("/ws/echo"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("at the hard cap: %s (%q), want 503 with Retry-After", resp.Status, body)
	}
	if st := ts.Stats(); st.RefusedAtAcceptTotal != 1 {
		t.Fatalf("refused at accept %d, want 1", st.RefusedAtAcceptTotal)
	}
	// The admin listener is not guarded by the public caps.
	if code := getStatus(t, ts.adminURL("/healthz")); code != http.StatusOK {
		t.Fatalf("/healthz %d, want 200", code)
	}
}

// getStatus returns the status of a GET on the admin listener.
func getStatus(t testing.TB, url string) int {
	t.Helper()
	resp, err := adminClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
