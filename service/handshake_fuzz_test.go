package service

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
	"testing"
	"time"
)

// FuzzUpgradeRequest sends arbitrary bytes as an HTTP request to a real
// server over a socket (then half-closes, so an incomplete request ends
// at once instead of at the header timeout). Invariants: the server does
// not crash; it answers 101 only to a request that validUpgradeOracle,
// written separately from checkRequest, calls a valid upgrade; every
// other answer is 4xx or 5xx (never a redirect or a 200); it never
// answers a valid upgrade with wsd's own 400; and it closes without an
// answer only when the bytes hold no complete request head.
func FuzzUpgradeRequest(f *testing.F) {
	for _, tt := range hostileUpgrades {
		f.Add([]byte(tt.req))
	}
	f.Add([]byte(upgradeRequest("/ws/topics/abc") + string(maskedFrame(0x1, []byte("hi")))))
	f.Add([]byte("GET /ws/echo HTTP/1.1\r\nHost: wsd\r\n\r\n"))
	f.Add([]byte("GET /debug/pprof/ HTTP/1.1\r\nHost: wsd\r\n\r\n"))
	f.Add([]byte("GET /ws/echo HTTP/1.1\r\n"))
	f.Add([]byte("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"))
	// The server's log cannot go to f: a fuzz target must not call F's
	// methods from inside f.Fuzz, where sessions end and log.
	ts := runServer(f, nil, WithLogger(slog.New(slog.DiscardHandler)))
	addr := ts.Addr().String()
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 8<<10 {
			return // beyond a header's size the answer is a 431, not a finding
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		// A write may fail when the server has already answered and
		// closed (a malformed request line): the answer is still read.
		_, _ = c.Write(in)
		_ = c.(*net.TCPConn).CloseWrite()
		resp, rerr := http.ReadResponse(bufio.NewReader(c), nil)
		req, qerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if rerr != nil {
			if errors.Is(qerr, io.EOF) || errors.Is(qerr, io.ErrUnexpectedEOF) {
				return // no complete request head: closing is the answer
			}
			t.Fatalf("no response (%v) to a complete request head (parse: %v): %q", rerr, qerr, in)
		}
		defer resp.Body.Close()
		valid := qerr == nil && validUpgradeOracle(req)
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			if !valid {
				t.Fatalf("101 to a request that is not a valid upgrade (parse: %v): %q", qerr, in)
			}
		case resp.StatusCode < 400 || resp.StatusCode > 599:
			t.Fatalf("status %s, want 101 or 4xx/5xx: %q", resp.Status, in)
		case valid && resp.StatusCode == http.StatusBadRequest:
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			if strings.HasPrefix(string(body), "wsd: ") {
				t.Fatalf("wsd refused a valid upgrade: %q, to %q", body, in)
			}
		}
	})
}

var topicPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// validUpgradeOracle restates the rules for an upgrade wsd accepts
// (README, Refused upgrades) without sharing checkRequest's code.
func validUpgradeOracle(r *http.Request) bool {
	tokens := func(name, want string) bool {
		for _, v := range r.Header.Values(name) {
			for _, tok := range strings.Split(v, ",") {
				if strings.EqualFold(strings.TrimSpace(tok), want) {
					return true
				}
			}
		}
		return false
	}
	keys, versions := r.Header.Values("Sec-WebSocket-Key"), r.Header.Values("Sec-WebSocket-Version")
	if r.Method != "GET" || r.ProtoMajor != 1 || r.ProtoMinor < 1 || r.ContentLength != 0 || len(r.TransferEncoding) != 0 ||
		!tokens("Connection", "upgrade") || !tokens("Upgrade", "websocket") ||
		len(versions) != 1 || versions[0] != "13" || len(keys) != 1 {
		return false
	}
	if key, err := base64.StdEncoding.DecodeString(keys[0]); err != nil || len(key) != 16 ||
		base64.StdEncoding.EncodeToString(key) != keys[0] {
		return false
	}
	raw := r.URL.EscapedPath()
	if raw != r.URL.Path {
		return false
	}
	if raw == "/ws/echo" {
		return true
	}
	topic, ok := strings.CutPrefix(raw, "/ws/topics/")
	return ok && topicPattern.MatchString(topic) && topic != "." && topic != ".."
}

// FuzzValidTopic: ValidTopic accepts exactly 1–128 characters of
// [A-Za-z0-9._-] other than "." and ".."; and a request target
// /ws/topics/<s> names a topic exactly when s is such a name, spelled
// as is, never a dot segment (path.Clean leaves the path alone).
func FuzzValidTopic(f *testing.F) {
	for _, s := range []string{"a", "AZaz09._-", ".", "..", "...", ".a", "%2e%2e", "%2E.", "%61", "a/b", "a%2Fb",
		"a b", "caf\u00e9", "", strings.Repeat("t", 128), strings.Repeat("t", 129), "a?b", "a#b", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := topicPattern.MatchString(s) && s != "." && s != ".."
		if got := ValidTopic(s); got != want {
			t.Fatalf("ValidTopic(%q) = %v, want %v", s, got, want)
		}
		if strings.Contains(s, "?") {
			return // the rest is a query, not part of the topic
		}
		u, err := url.ParseRequestURI(topicPrefix + s)
		if err != nil {
			if want {
				t.Fatalf("a valid topic %q is not a valid request target: %v", s, err)
			}
			return
		}
		topic, ok := requestTopic(&http.Request{URL: u})
		if ok != want {
			t.Fatalf("request target %q: topic %q accepted %v, want %v", topicPrefix+s, topic, ok, want)
		}
		if ok && (topic != s || path.Clean(topicPrefix+topic) != topicPrefix+topic) {
			t.Fatalf("request target %q names topic %q", topicPrefix+s, topic)
		}
	})
}
