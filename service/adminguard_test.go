package service

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// TestAdminDefaultsAreClosed: the unauthenticated admin port listens on
// loopback only, without pprof, with a connection cap and a profile cap.
func TestAdminDefaultsAreClosed(t *testing.T) {
	c := DefaultConfig()
	if c.AdminListen != "127.0.0.1:9090" || c.Admin.Pprof || c.Admin.MaxConnections != 64 || c.Admin.MaxProfileDuration != 30*time.Second {
		t.Fatalf("defaults admin_listen %q admin %+v, want 127.0.0.1:9090, pprof off, 64 connections, 30s profiles", c.AdminListen, c.Admin)
	}
	c.Admin.MaxConnections, c.Admin.MaxProfileDuration = 0, 0
	err := c.Validate()
	for _, key := range []string{"admin.max_connections", "admin.max_profile_duration"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate with zero %s: %v, want an error naming it", key, err)
		}
	}
}

// TestAdminPprofOptIn: /debug/pprof/ is 404 unless admin.pprof is set;
// when set, only GET is served and no request may profile for longer
// than admin.max_profile_duration (400, before any profiling starts).
func TestAdminPprofOptIn(t *testing.T) {
	paths := []string{"/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1",
		"/debug/pprof/goroutine?debug=2", "/debug/pprof/heap", "/debug/pprof/cmdline"}
	t.Run("off by default", func(t *testing.T) {
		ts := runServer(t, nil)
		for _, p := range paths {
			if code := getStatus(t, ts.adminURL(p)); code != http.StatusNotFound {
				t.Errorf("GET %s: %d with pprof off, want 404", p, code)
			}
		}
	})
	t.Run("on", func(t *testing.T) {
		ts := runServer(t, func(c *Config) { c.Admin.Pprof, c.Admin.MaxProfileDuration = true, 5*time.Second })
		for _, tt := range []struct {
			method, path string
			status       int
		}{
			{"GET", "/debug/pprof/", 200},
			{"GET", "/debug/pprof/goroutine?debug=2", 200},
			{"GET", "/debug/pprof/heap?seconds=1", 200},
			{"GET", "/debug/pprof/trace?seconds=0.2", 200},
			{"GET", "/debug/pprof/profile?seconds=1", 200},
			{"GET", "/debug/pprof/profile?seconds=600", 400},
			{"GET", "/debug/pprof/profile?seconds=6", 400},
			// Without seconds (or with one it cannot parse), a CPU
			// profile runs 30 s: above this server's 5 s cap.
			{"GET", "/debug/pprof/profile", 400},
			{"GET", "/debug/pprof/profile?seconds=1.5", 400},
			{"GET", "/debug/pprof/trace?seconds=600", 400},
			{"GET", "/debug/pprof/trace?seconds=Inf", 400},
			{"GET", "/debug/pprof/heap?seconds=600", 400},
			{"GET", "/debug/pprof/goroutine?seconds=600", 400},
			{"POST", "/debug/pprof/profile?seconds=1", 405},
		} {
			req, _ := http.NewRequest(tt.method, ts.adminURL(tt.path), nil)
			resp, err := adminClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tt.method, tt.path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("%s %s: %d, want %d (%.200q)", tt.method, tt.path, resp.StatusCode, tt.status, body)
			}
			if tt.status == 400 && !strings.Contains(string(body), "admin.max_profile_duration") {
				t.Errorf("%s %s: 400 body %q, want it to name admin.max_profile_duration", tt.method, tt.path, body)
			}
		}
	})
}

// TestAdminConnectionCap: open admin connections beyond
// admin.max_connections get the canned 503 at accept and are closed,
// while the connections already open keep being served; closing one
// frees its slot.
func TestAdminConnectionCap(t *testing.T) {
	ts := runServer(t, func(c *Config) { c.Admin.MaxConnections = 2 })
	addr := ts.AdminAddr().String()
	// Each held connection has made a request and is idle in keep-alive
	// (idle timeout 60 s), so no header timeout can free its slot.
	type held struct {
		c  net.Conn
		br *bufio.Reader
	}
	healthz := func(h held) error {
		_ = h.c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(h.c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(h.br, nil)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz %s", resp.Status)
		}
		return nil
	}
	var conns []held
	for i := range 2 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		h := held{c, bufio.NewReader(c)}
		if err := healthz(h); err != nil {
			t.Fatalf("held connection %d: %v", i, err)
		}
		conns = append(conns, h)
	}
	resp, body := rawHTTP(t, addr, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("third admin connection: %s Retry-After %q (%q), want the canned 503", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	if st := ts.Stats(); st.RefusedAtAcceptTotal != 1 {
		t.Fatalf("refused_at_accept_total %d, want 1", st.RefusedAtAcceptTotal)
	}
	for i, h := range conns {
		if err := healthz(h); err != nil {
			t.Fatalf("held connection %d after the refusal: %v", i, err)
		}
	}
	conns[0].c.Close()
	// The server notices the close on its next read: poll.
	wstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		return healthz(held{c, bufio.NewReader(c)})
	})
}
