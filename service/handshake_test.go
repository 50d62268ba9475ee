package service

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// smuggled is a masked text frame "SMUGGLED": 14 bytes, the body of the
// requests that try to pass frames off as a request body.
var smuggled = maskedFrame(0x1, []byte("SMUGGLED"))

// hostileUpgrades are the upgrade requests of the hostile-input issue,
// with the status each must get. A 400 is counted as bad_request; a 404
// (no such endpoint) is not an upgrade attempt and is not counted.
var hostileUpgrades = []struct {
	name   string
	req    string
	status int
}{
	// RFC 6455 §4.2.1: the key is base64 of 16 bytes.
	{"key not base64", strings.Replace(upgradeRequest("/ws/echo"), "dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!", 1), 400},
	{"key of 17 bytes", strings.Replace(upgradeRequest("/ws/echo"), "dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAAA=", 1), 400},
	{"key of 15 bytes", strings.Replace(upgradeRequest("/ws/echo"), "dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAA", 1), 400},
	{"key with non-canonical padding bits", strings.Replace(upgradeRequest("/ws/echo"), "dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR==", 1), 400},
	{"duplicate key", upgradeRequest("/ws/echo", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="), 400},
	{"duplicate identical key", upgradeRequest("/ws/echo", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="), 400},
	{"duplicate version", upgradeRequest("/ws/echo", "Sec-WebSocket-Version: 13"), 400},
	{"two versions in one header", strings.Replace(upgradeRequest("/ws/echo"), "Version: 13", "Version: 13, 8", 1), 400},
	{"HTTP/1.0", strings.Replace(upgradeRequest("/ws/echo"), "HTTP/1.1", "HTTP/1.0", 1), 400},
	{"body with Content-Length", upgradeRequest("/ws/echo", "Content-Length: 14") + string(smuggled), 400},
	{"chunked body", upgradeRequest("/ws/echo", "Transfer-Encoding: chunked") + "e\r\n" + string(smuggled) + "\r\n0\r\n\r\n", 400},
	{"empty chunked body", upgradeRequest("/ws/echo", "Transfer-Encoding: chunked") + "0\r\n\r\n", 400},
	{"body on a topic", upgradeRequest("/ws/topics/t", "Content-Length: 14") + string(smuggled), 400},
	{"topic .", upgradeRequest("/ws/topics/."), 400},
	{"topic ..", upgradeRequest("/ws/topics/.."), 400},
	{"topic %2e%2e", upgradeRequest("/ws/topics/%2e%2e"), 400},
	{"topic %2E%2e", upgradeRequest("/ws/topics/%2E%2e"), 400},
	{"topic .%2e", upgradeRequest("/ws/topics/.%2e"), 400},
	{"topic %2e", upgradeRequest("/ws/topics/%2e"), 400},
	{"topic ../echo", upgradeRequest("/ws/topics/../echo"), 400},
	{"topic a/..", upgradeRequest("/ws/topics/a/.."), 400},
	{"escaped valid topic", upgradeRequest("/ws/topics/%61bc"), 400},
	// Not dot segments: valid names.
	{"topic ...", upgradeRequest("/ws/topics/..."), 101},
	{"topic .a", upgradeRequest("/ws/topics/.a"), 101},
	// Paths a ServeMux would redirect (301): no endpoint, never a 3xx.
	{"echo/..", upgradeRequest("/ws/echo/.."), 404},
	{"./echo", upgradeRequest("/ws/./echo"), 404},
	{"escaped echo", upgradeRequest("/ws/%65cho"), 404},
	{"topics without slash", upgradeRequest("/ws/topics"), 404},
	{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: wsd\r\n\r\n", 404},
	// RFC 6455 §4.1: Upgrade includes websocket, Connection includes
	// Upgrade; header lines may repeat (RFC 9110 §5.3).
	{"Upgrade with two tokens", strings.Replace(upgradeRequest("/ws/echo"), "Upgrade: websocket", "Upgrade: h2c, websocket", 1), 101},
	{"Connection split over two lines", strings.Replace(upgradeRequest("/ws/echo"), "Connection: Upgrade", "Connection: keep-alive\r\nConnection: Upgrade", 1), 101},
	{"Content-Length 0", upgradeRequest("/ws/echo", "Content-Length: 0"), 101},
	{"valid", upgradeRequest("/ws/echo"), 101},
}

// TestHostileUpgrades: each hostile upgrade request gets its exact
// status before any handshake, a 400 says why, and after a refusal the
// server sends nothing more and closes: a body is never read as frames
// (nothing is echoed).
func TestHostileUpgrades(t *testing.T) {
	ts := runServer(t, nil)
	want400 := 0
	for _, tt := range hostileUpgrades {
		if tt.status == 400 {
			want400++
		}
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", ts.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, tt.req); err != nil {
				t.Fatalf("write request: %v", err)
			}
			br := bufio.NewReader(c)
			resp, body := readResponse(t, br)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %s (%q), want %d", resp.Status, body, tt.status)
			}
			if tt.status == http.StatusSwitchingProtocols {
				return
			}
			if tt.status == 400 && (!strings.HasPrefix(body, "wsd: ") || !resp.Close) {
				t.Fatalf("400 body %q close %v, want a wsd explanation and Connection: close", body, resp.Close)
			}
			if tt.status != 400 {
				return // a 404 keeps the connection for the next request
			}
			rest, err := io.ReadAll(br)
			if err != nil && !isEOF(err) {
				t.Fatalf("after the 400: %v (read %q), want the server to close", err, rest)
			}
			if len(rest) != 0 {
				t.Fatalf("after the 400 the server sent %q, want nothing (a body read as frames is echoed)", rest)
			}
		})
	}
	if got := ts.obs.snapshot().rejected; len(got) != 1 || got[RejectBadRequest] != want400 {
		t.Fatalf("rejections %v, want %d bad_request", got, want400)
	}
	waitIdle(t, ts)
}

// TestUpgradeBodyNotEchoedAsFrames is the smuggling row end to end: the
// same frame that a server reading the body as WebSocket data would echo
// is echoed when sent after a valid upgrade, and not when sent as the
// body of one (which gets 400 and no upgrade).
func TestUpgradeBodyNotEchoedAsFrames(t *testing.T) {
	ts := runServer(t, nil)
	exchange := func(req []byte) (*http.Response, []byte) {
		c, err := net.DialTimeout("tcp", ts.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		// Whatever follows the response, up to 1 s of quiet.
		var rest bytes.Buffer
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = io.Copy(&rest, br)
		if err != nil && !isEOF(err) && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after response: %v", err)
		}
		return resp, rest.Bytes()
	}
	resp, rest := exchange(append([]byte(upgradeRequest("/ws/echo")), smuggled...))
	if resp.StatusCode != http.StatusSwitchingProtocols || !bytes.Contains(rest, []byte("SMUGGLED")) {
		t.Fatalf("frame after a valid upgrade: %s, then %q; want 101 and the echo (else this test proves nothing)", resp.Status, rest)
	}
	resp, rest = exchange(append([]byte(upgradeRequest("/ws/echo", "Content-Length: 14")), smuggled...))
	if resp.StatusCode != http.StatusBadRequest || len(rest) != 0 {
		t.Fatalf("frame as the request body: %s, then %q; want 400 and nothing", resp.Status, rest)
	}
	waitIdle(t, ts)
}

// TestUnsupportedVersionNamesOurs: a refused Sec-WebSocket-Version gets
// Sec-WebSocket-Version: 13 (RFC 6455 §4.4), so the client can retry.
func TestUnsupportedVersionNamesOurs(t *testing.T) {
	ts := runServer(t, nil)
	resp, body := rawHTTP(t, ts.Addr().String(), strings.Replace(upgradeRequest("/ws/echo"), "Version: 13", "Version: 8", 1))
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Sec-WebSocket-Version") != "13" {
		t.Fatalf("version 8: %s Sec-WebSocket-Version %q (%q), want 400 naming 13", resp.Status, resp.Header.Get("Sec-WebSocket-Version"), body)
	}
}
