package service

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// closePayload is a close frame payload: code and reason.
func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// expectServerClose reads until the server's close frame and then EOF:
// the server closes the TCP connection after its close frame. It fails
// on a code a server must never send (1005, 1006, 1015 or another
// reserved value). want 0 means an empty close frame.
func expectServerClose(t *testing.T, c *wstest.Conn, want uint16) {
	t.Helper()
	var f wstest.Frame
	for {
		var err error
		f, err = c.ReadFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("no close frame from the server: %v", err)
		}
		if f.Opcode == wstest.OpClose {
			break
		}
	}
	switch {
	case len(f.Payload) == 1:
		t.Fatalf("server sent a 1-byte close payload")
	case len(f.Payload) >= 2 && !ValidCloseCode(f.CloseCode()):
		t.Fatalf("server sent reserved or invalid close code %d", f.CloseCode())
	case f.CloseCode() != want:
		t.Fatalf("server close code %d (payload %q), want %d", f.CloseCode(), f.Payload, want)
	}
	if _, err := c.ReadFrame(10 * time.Second); !isEOF(err) {
		t.Fatalf("after the close frame: %v, want the connection closed", err)
	}
}

// lastClose waits for the observer's Closed call and returns it.
func lastClose(t *testing.T, ts *testServer) CloseInfo {
	t.Helper()
	var info CloseInfo
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		snap := ts.obs.snapshot()
		if len(snap.closes) != 1 {
			return fmt.Errorf("%d sessions closed, want 1", len(snap.closes))
		}
		info = snap.closes[0]
		return nil
	})
	return info
}

// waitLog waits for exactly one captured line at level with msg and the
// given attributes (the observer is told before the line is written).
func waitLog(t *testing.T, ts *testServer, level slog.Level, msg string, attrs map[string]string) capturedLog {
	t.Helper()
	var line capturedLog
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		got := ts.logs.find(level, msg, attrs)
		if len(got) != 1 {
			return fmt.Errorf("%d %s %q lines with %v, want 1", len(got), level, msg, attrs)
		}
		line = got[0]
		return nil
	})
	return line
}

// checkClientClose sends payload as a client's close frame to a new
// server and checks the answer (reply; 0: an empty close frame) and the
// report: a client close with code and its label, told to the observer
// as valid or not, with errInvalidCloseFrame and a warn log line when
// invalid, an info line and no error when valid; nothing left after.
func checkClientClose(t *testing.T, payload []byte, code, reply uint16, valid bool) {
	t.Helper()
	ts := runServer(t, nil)
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	if err := c.WriteFrame(wstest.OpClose, payload); err != nil {
		t.Fatal(err)
	}
	expectServerClose(t, c, reply)
	var wantErr error // errors.Is(err, nil) means err == nil
	level := slog.LevelInfo
	if !valid {
		wantErr, level = errInvalidCloseFrame, slog.LevelWarn
	}
	info := lastClose(t, ts)
	if info.Initiator != InitiatorClient || info.Code != code || !errors.Is(info.Err, wantErr) {
		t.Fatalf("close info %+v, want client-initiated %d with error %v", info, code, wantErr)
	}
	if info.CodeLabel != CloseCodeLabel(code) {
		t.Fatalf("code label %q, want %q", info.CodeLabel, CloseCodeLabel(code))
	}
	if got := ts.obs.snapshot().received; len(got) != 1 || got[0] != (receivedClose{code, valid}) {
		t.Fatalf("CloseReceived %+v, want {%d %v}", got, code, valid)
	}
	waitLog(t, ts, level, "connection closed", map[string]string{
		"code": strconv.Itoa(int(code)), "initiator": "client"})
	waitIdle(t, ts)
}

// TestInvalidCloseFrames: a close frame that breaks RFC 6455 §7.4 is
// answered with 1002 and the connection closed; the observer sees it as
// invalid and the close is logged at warn.
func TestInvalidCloseFrames(t *testing.T) {
	tests := []struct {
		name    string
		payload []byte
		code    uint16 // as reported to the observer
	}{
		{"999", closePayload(999, ""), 999},
		{"0", closePayload(0, ""), 0},
		{"1004", closePayload(1004, ""), 1004},
		{"1005", closePayload(1005, ""), 1005},
		{"1006", closePayload(1006, ""), 1006},
		{"1015", closePayload(1015, ""), 1015},
		{"1016", closePayload(1016, ""), 1016},
		{"2999", closePayload(2999, ""), 2999},
		{"5000", closePayload(5000, ""), 5000},
		{"65535", closePayload(65535, "bye"), 65535},
		{"1-byte payload", []byte{0x03}, 3},
		{"1-byte payload 0", []byte{0x00}, 0},
		{"non-UTF-8 reason", closePayload(1000, "bad \xff\xfe reason"), 1000},
		{"non-UTF-8 reason, private code", closePayload(4000, "\xc3\x28"), 4000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkClientClose(t, tt.payload, tt.code, CloseProtocolError, false)
		})
	}
}

// TestValidCloseFrames: a valid close frame is answered and reported as
// a client close. wsd answers 3000–4999 with the same code (RFC 6455
// §5.5.1: "typically echos the status code it received") and 1000–1014
// with 1000; an empty close frame with an empty one. 1014 (registered
// with IANA after RFC 6455) is valid: gws alone answered it with 1002.
func TestValidCloseFrames(t *testing.T) {
	tests := []struct {
		name    string
		payload []byte
		code    uint16 // reported to the observer
		reply   uint16 // 0: empty close frame
	}{
		{"1000", closePayload(1000, "done"), 1000, 1000},
		{"1001", closePayload(1001, "going away"), 1001, 1000},
		{"1003", closePayload(1003, ""), 1003, 1000},
		{"1011", closePayload(1011, ""), 1011, 1000},
		{"1013", closePayload(1013, ""), 1013, 1000},
		{"3000", closePayload(3000, "app"), 3000, 3000},
		{"4999", closePayload(4999, "app"), 4999, 4999},
		{"UTF-8 reason", closePayload(1000, "très bien ✓"), 1000, 1000},
		{"empty", nil, 0, 0},
		{"1014", closePayload(1014, ""), 1014, CloseNormal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkClientClose(t, tt.payload, tt.code, tt.reply, true)
		})
	}
}

// TestServerCloseCodes: what the server sends when a client breaks the
// protocol or a handler fails, and what it reports.
func TestServerCloseCodes(t *testing.T) {
	panicky := func(s *Server) {
		s.testHook = func(_ *session, m *gws.Message) {
			if string(m.Bytes()) == "panic" {
				panic("test panic")
			}
		}
	}
	maskedFrame := func(first byte, payload []byte) []byte {
		b := []byte{first, 0x80 | byte(len(payload)), 0, 0, 0, 0}
		return append(b, payload...) // zero mask: payload as is
	}
	tests := []struct {
		name   string
		send   func(c *wstest.Conn) error
		code   uint16
		reason string // prefix of the recorded reason
	}{
		{"invalid UTF-8 text", func(c *wstest.Conn) error { return c.WriteFrame(wstest.OpText, []byte("ok \xff\xfe")) },
			CloseInvalidPayload, ""},
		{"invalid UTF-8 across fragments", func(c *wstest.Conn) error {
			if err := c.WriteFragment(false, wstest.OpText, []byte("ok \xe2\x82")); err != nil {
				return err
			}
			return c.WriteFragment(true, wstest.OpContinuation, []byte("\x28"))
		}, CloseInvalidPayload, ""},
		{"message over max_message_bytes", func(c *wstest.Conn) error { return c.WriteFrame(wstest.OpBinary, make([]byte, 1025)) },
			CloseMessageTooBig, ""},
		{"fragmented message over max_message_bytes", func(c *wstest.Conn) error {
			if err := c.WriteFragment(false, wstest.OpBinary, make([]byte, 600)); err != nil {
				return err
			}
			return c.WriteFragment(true, wstest.OpContinuation, make([]byte, 600))
		}, CloseMessageTooBig, ""},
		{"handler panic", func(c *wstest.Conn) error { return c.WriteFrame(wstest.OpText, []byte("panic")) },
			CloseInternalError, reasonInternalError},
		{"unmasked frame", func(c *wstest.Conn) error {
			_, err := c.Write([]byte{0x81, 2, 'h', 'i'})
			return err
		}, CloseProtocolError, ""},
		{"reserved opcode", func(c *wstest.Conn) error { _, err := c.Write(maskedFrame(0x83, nil)); return err },
			CloseProtocolError, ""},
		{"RSV1 without extension", func(c *wstest.Conn) error { _, err := c.Write(maskedFrame(0xC1, []byte("x"))); return err },
			CloseProtocolError, ""},
		{"fragmented ping", func(c *wstest.Conn) error { _, err := c.Write(maskedFrame(0x09, nil)); return err },
			CloseProtocolError, ""},
		{"continuation without start", func(c *wstest.Conn) error { return c.WriteFrame(wstest.OpContinuation, []byte("x")) },
			CloseProtocolError, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := runServerWith(t, func(c *Config) { c.Limits.MaxMessageBytes = 1024 }, panicky)
			c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
			if err := tt.send(c); err != nil {
				t.Fatal(err)
			}
			expectServerClose(t, c, tt.code)
			// Answer as a client should: after its own close frames wsd
			// waits (up to a bound) for the peer's; after gws's protocol
			// errors the socket is already closed and this write is lost.
			_ = c.WriteClose(tt.code, "")
			info := lastClose(t, ts)
			if info.Initiator != InitiatorServer || info.Code != tt.code || !strings.HasPrefix(info.Reason, tt.reason) {
				t.Fatalf("close info %+v, want server-initiated %d %q", info, tt.code, tt.reason)
			}
			if got := ts.obs.snapshot().received; len(got) != 0 {
				t.Fatalf("CloseReceived %+v for a server close, want none", got)
			}
			// The process lives on and serves the next client.
			c2 := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
			if err := c2.WriteFrame(wstest.OpText, []byte("after")); err != nil {
				t.Fatal(err)
			}
			if f, err := c2.ReadFrame(10 * time.Second); err != nil || string(f.Payload) != "after" {
				t.Fatalf("echo after the close: %q %v", f.Payload, err)
			}
			c2.Close()
			waitIdle(t, ts)
		})
	}
}

// TestPanicIsLogged: a handler panic is logged at error with the panic
// value, and the close line says 1011 server.
func TestPanicIsLogged(t *testing.T) {
	ts := runServerWith(t, nil, func(s *Server) {
		s.testHook = func(*session, *gws.Message) { panic("boom") }
	})
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/topics/t"))
	if err := c.WriteFrame(wstest.OpBinary, []byte("x")); err != nil {
		t.Fatal(err)
	}
	expectServerClose(t, c, CloseInternalError)
	_ = c.WriteClose(CloseInternalError, "")
	waitLog(t, ts, slog.LevelError, "panic while handling a message; closing with 1011", map[string]string{"panic": "boom"})
	waitLog(t, ts, slog.LevelInfo, "connection closed", map[string]string{
		"code": "1011", "initiator": "server", "topic": "t", "endpoint": "topic"})
	waitIdle(t, ts)
}

// TestCloseLogLine: every close is one structured line with the fields
// an operator needs.
func TestCloseLogLine(t *testing.T) {
	ts := runServer(t, nil)
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	for range 3 {
		if err := c.WriteFrame(wstest.OpBinary, []byte("12345")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadFrame(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WriteClose(3001, strings.Repeat("r", 100)); err != nil {
		t.Fatal(err)
	}
	expectServerClose(t, c, 3001)
	line := waitLog(t, ts, slog.LevelInfo, "connection closed", nil)
	want := map[string]string{
		"code": "3001", "reason": strings.Repeat("r", 100), "initiator": "client", "endpoint": "echo",
		"msgs_in": "3", "bytes_in": "15", "msgs_out": "3", "bytes_out": "15", "conn_id": "1",
	}
	for k, v := range want {
		if line.attrs[k] != v {
			t.Errorf("%s=%q, want %q", k, line.attrs[k], v)
		}
	}
	for _, k := range []string{"remote", "duration"} {
		if line.attrs[k] == "" {
			t.Errorf("no %s in %v", k, line.attrs)
		}
	}
}

// TestCloseCodeTables checks the pure functions behind the close table.
func TestCloseCodeTables(t *testing.T) {
	for code := range 65536 {
		c := uint16(code)
		want := (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999)
		if ValidCloseCode(c) != want {
			t.Fatalf("ValidCloseCode(%d) = %v, want %v", c, !want, want)
		}
		label := CloseCodeLabel(c)
		switch {
		case !want && c != 0 && c != 1005 && c != 1006 && label != "invalid":
			t.Fatalf("label(%d) = %q, want invalid", c, label)
		case c >= 3000 && c <= 4999 && c != CloseHeartbeatTimeout && c != CloseTokenExpired && label != "private":
			t.Fatalf("label(%d) = %q, want private", c, label)
		case c >= 1000 && c <= 1014 && want && label != strconv.Itoa(code):
			t.Fatalf("label(%d) = %q", c, label)
		}
	}
	for code, label := range map[uint16]string{0: "1005", 1005: "1005", 1006: "1006", 4000: "4000", 4001: "4001"} {
		if got := CloseCodeLabel(code); got != label {
			t.Fatalf("label(%d) = %q, want %q", code, got, label)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{strings.Repeat("a", 123), strings.Repeat("a", 123)},
		{strings.Repeat("a", 124), strings.Repeat("a", 123)},
		{strings.Repeat("a", 122) + "é", strings.Repeat("a", 122)}, // no split rune
	} {
		if got := truncateReason(tt.in); got != tt.want {
			t.Fatalf("truncateReason(%d bytes) = %d bytes, want %d", len(tt.in), len(got), len(tt.want))
		}
	}
	// Every code wsd sends itself is valid on the wire.
	for _, c := range []uint16{CloseNormal, CloseGoingAway, CloseProtocolError, CloseInvalidPayload,
		CloseMessageTooBig, CloseInternalError, CloseTryAgainLater, CloseHeartbeatTimeout} {
		if !ValidCloseCode(c) {
			t.Fatalf("wsd sends %d, which is not a valid close code", c)
		}
	}
}
