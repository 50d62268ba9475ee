package service

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// The fuzz targets for what peers send after the upgrade (the upgrade
// request itself: handshake_fuzz_test.go). Their seed
// corpora (testdata/fuzz/<name>) run as ordinary tests; .ci/run fuzzes
// each for a short fixed time.

// FuzzFrames drives arbitrary bytes after a valid upgrade into a real
// server over a real socket: the server must survive (no panic, even a
// recovered one), the connection must end with a close code wsd may send
// or a bare end of stream, nothing may follow the close frame, and the
// server must release the connection.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add(cat(frame(wstest.OpText, "Hello"), frame(wstest.OpText|0x20, "x"), frame(wstest.OpPing, "p")))
	f.Add(cat(frag(false, wstest.OpText, "\xce\xba"), frame(wstest.OpPing, ""), frag(true, wstest.OpContinuation, "\xe1\xbd\xb9")))
	f.Add(closeFrame(1014, "bye"))
	ts := runServer(f, func(c *Config) {
		c.Limits.MaxMessageBytes = 4096
		c.Limits.MaxPartialBytes = 1 << 20
		c.Heartbeat.PingInterval = time.Hour
	}, WithLogger(slog.New(slog.DiscardHandler))) // f.Log may not be called from the fuzz function
	f.Fuzz(func(t *testing.T, input []byte) {
		c, resp, err := wstest.DialRaw(ts.wsURL("/ws/echo"))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		if resp.StatusCode != 101 {
			t.Fatalf("upgrade: %s", resp.Status)
		}
		if _, err := c.Write(input); err != nil {
			t.Fatalf("write: %v", err)
		}
		_ = c.Conn.(interface{ CloseWrite() error }).CloseWrite()
		closed := false
		for {
			fr, err := c.ReadFrame(10 * time.Second)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("the connection did not end with a close frame or EOF: %v", err)
				}
				break
			}
			if closed {
				t.Fatalf("opcode %#x after the close frame", fr.Opcode)
			}
			if fr.Opcode == wstest.OpClose {
				closed = true
				if code := fr.CloseCode(); len(fr.Payload) != 0 && !sendable(code) {
					t.Fatalf("close code %d is not one wsd sends", code)
				}
			}
		}
		wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if st := ts.Stats(); st.Connections != 0 || st.PanicsTotal != 0 || st.BufferedBytes != 0 {
				return fmt.Errorf("after the input: connections=%d panics_total=%d buffered_bytes=%d", st.Connections, st.PanicsTotal, st.BufferedBytes)
			}
			return nil
		})
	})
}

// sendable reports whether wsd may send code in a close frame: the codes
// of the README's close-code table, and 3000–4999 echoed.
func sendable(code uint16) bool {
	switch code {
	case CloseNormal, CloseGoingAway, CloseProtocolError, CloseInvalidPayload, ClosePolicyViolation,
		CloseMessageTooBig, CloseInternalError, CloseTryAgainLater:
		return true
	}
	return code >= 3000 && code <= 4999
}

// FuzzFrameGuard checks the guard alone: it never panics, and its
// verdict does not depend on how the stream is cut into reads (byte by
// byte or whole); the bytes it lets through are a prefix of the input
// and, except where UTF-8 fails inside a payload, the same prefix.
func FuzzFrameGuard(f *testing.F) {
	f.Add([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, uint16(100))
	f.Add(cat(frame(wstest.OpBinary, "ok"), rawHeader(0x82, 126, []byte{0, 5}, "hello")), uint16(100))
	f.Add(cat(frag(false, wstest.OpText, "ab"), frag(true, wstest.OpContinuation, "\xffcd")), uint16(100))
	f.Add(cat(frame(wstest.OpBinary, "x"), closeFrame(1000, "bye")), uint16(10))
	f.Fuzz(func(t *testing.T, input []byte, max uint16) {
		whole, endWhole := guardScan(input, len(input)+1, int(max))
		bytewise, endBytes := guardScan(input, 1, int(max))
		if (endWhole == nil) != (endBytes == nil) {
			t.Fatalf("whole: %+v, byte by byte: %+v", endWhole, endBytes)
		}
		if endWhole != nil && (endWhole.code != endBytes.code || endWhole.peerClose != endBytes.peerClose ||
			endWhole.peerCode != endBytes.peerCode || endWhole.valid != endBytes.valid) {
			t.Fatalf("whole: %+v, byte by byte: %+v", endWhole, endBytes)
		}
		for _, out := range [][]byte{whole, bytewise} {
			if len(out) > len(input) || string(out) != string(input[:len(out)]) {
				t.Fatalf("let through %d bytes that are not a prefix of the input", len(out))
			}
		}
		if (endWhole == nil || endWhole.code != CloseInvalidPayload) && len(whole) != len(bytewise) {
			t.Fatalf("let through %d bytes whole, %d byte by byte (end %+v)", len(whole), len(bytewise), endWhole)
		}
	})
}

// FuzzUTF8Stream: validating in three pieces agrees with utf8.Valid.
func FuzzUTF8Stream(f *testing.F) {
	f.Add([]byte("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"), uint8(1), uint8(4))
	f.Add([]byte("\xed\xa0\x80"), uint8(1), uint8(2))
	f.Add([]byte("\xf4\x90\x80\x80"), uint8(2), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, c1, c2 uint8) {
		i := min(int(c1), len(b))
		j := min(i+int(c2), len(b))
		var u utf8Stream
		got := u.feed(b[:i]) && u.feed(b[i:j]) && u.feed(b[j:]) && u.complete()
		if got != utf8.Valid(b) {
			t.Fatalf("%q cut at %d,%d: stream %v, utf8.Valid %v", b, i, j, got, utf8.Valid(b))
		}
	})
}

// FuzzCloseCode: every code maps to a bounded label, and the label of a
// valid code is never "invalid".
func FuzzCloseCode(f *testing.F) {
	for _, c := range []uint16{0, 999, 1000, 1004, 1005, 1014, 1015, 2999, 3000, 4999, 5000} {
		f.Add(c)
	}
	labels := map[string]bool{"private": true, "invalid": true, "4000": true, "4001": true}
	for c := 1000; c <= 1014; c++ {
		if c != 1004 {
			labels[fmt.Sprint(c)] = true
		}
	}
	f.Fuzz(func(t *testing.T, code uint16) {
		l := CloseCodeLabel(code)
		if !labels[l] {
			t.Fatalf("CloseCodeLabel(%d) = %q, outside the bounded set", code, l)
		}
		if ValidCloseCode(code) && l == "invalid" {
			t.Fatalf("valid code %d labelled invalid", code)
		}
	})
}
