package service

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// The WebSocket clients the tests use are in internal/wstest; these are
// the raw HTTP requests that admission and accept tests send.

// rawHTTP sends req (a complete request) on a new connection to addr and
// returns the response with its body read.
func rawHTTP(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	return readResponse(t, bufio.NewReader(c))
}

// readResponse reads one HTTP response and its body.
func readResponse(t testing.TB, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// upgradeRequest is a valid WebSocket upgrade request for path.
func upgradeRequest(path string, extra ...string) string {
	req := "GET " + path + " HTTP/1.1\r\nHost: wsd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	return req + "\r\n"
}
