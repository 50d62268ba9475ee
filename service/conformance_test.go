package service

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// The conformance table: one case per Autobahn|Testsuite behaviour wsd
// must get right (sections 1–7 and 9, plus the cases it failed or was
// non-strict on), each sending raw frames, several in one TCP write
// where the suite does, and asserting every frame the peer receives,
// in order, then the end of the stream.

// confStep is one step of a case: bytes written in one TCP write, or
// frames expected, or both (write first).
type confStep struct {
	write []byte
	pause time.Duration // before the write: the suite's pauses between fragments
	want  []wstest.Frame
	close uint16 // > 0: a close frame with this code, then the end of the stream
	empty bool   // an empty close frame, then the end of the stream
}

func frame(op byte, payload string) []byte { return wstest.AppendFrame(nil, true, op, []byte(payload)) }
func frag(fin bool, op byte, payload string) []byte {
	return wstest.AppendFrame(nil, fin, op, []byte(payload))
}
func cat(bs ...[]byte) []byte    { return bytes.Join(bs, nil) }
func text(p string) wstest.Frame { return wstest.Frame{Opcode: wstest.OpText, Payload: []byte(p)} }
func bin(p string) wstest.Frame  { return wstest.Frame{Opcode: wstest.OpBinary, Payload: []byte(p)} }
func pong(p string) wstest.Frame { return wstest.Frame{Opcode: wstest.OpPong, Payload: []byte(p)} }
func closeFrame(code uint16, reason string) []byte {
	return frame(wstest.OpClose, string(binary.BigEndian.AppendUint16(nil, code))+reason)
}

// rawHeader is a masked frame header with an explicit length encoding
// (ext is the extended length field, as sent), followed by payload.
func rawHeader(b0, len7 byte, ext []byte, payload string) []byte {
	h := append([]byte{b0, 0x80 | len7}, ext...)
	h = append(h, 1, 2, 3, 4)
	for i := range len(payload) {
		h = append(h, payload[i]^byte(i%4+1))
	}
	return h
}

var invalidUTF8 = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited" // a surrogate

func conformanceCases() []struct {
	name  string
	steps []confStep
} {
	pings := func() []byte {
		var b []byte
		for i := range 10 {
			b = append(b, frame(wstest.OpPing, fmt.Sprintf("payload-%d", i))...)
		}
		return b
	}
	pongs := func() []wstest.Frame {
		var f []wstest.Frame
		for i := range 10 {
			f = append(f, pong(fmt.Sprintf("payload-%d", i)))
		}
		return f
	}
	big := strings.Repeat("\u00e9t\u00e9 ", 1<<18/6) // ~1 MiB of 2-byte and 1-byte runes
	type c = struct {
		name  string
		steps []confStep
	}
	return []c{
		// 1 framing
		{"1.1.1 empty text", []confStep{{write: frame(wstest.OpText, ""), want: []wstest.Frame{text("")}}}},
		{"1.1.2 text 125", []confStep{{write: frame(wstest.OpText, strings.Repeat("*", 125)), want: []wstest.Frame{text(strings.Repeat("*", 125))}}}},
		{"1.1.3 text 126 (16-bit length)", []confStep{{write: frame(wstest.OpText, strings.Repeat("*", 126)), want: []wstest.Frame{text(strings.Repeat("*", 126))}}}},
		{"1.1.5 text 65536 (64-bit length)", []confStep{{write: frame(wstest.OpText, strings.Repeat("*", 65536)), want: []wstest.Frame{text(strings.Repeat("*", 65536))}}}},
		{"1.2.1 binary", []confStep{{write: frame(wstest.OpBinary, "\x00\xff\xfe"), want: []wstest.Frame{bin("\x00\xff\xfe")}}}},
		// 2 pings and pongs
		{"2.1 empty ping", []confStep{{write: frame(wstest.OpPing, ""), want: []wstest.Frame{pong("")}}}},
		{"2.3 binary ping payload", []confStep{{write: frame(wstest.OpPing, "\x00\xff\xfe\xfd"), want: []wstest.Frame{pong("\x00\xff\xfe\xfd")}}}},
		{"2.5 ping over 125 bytes", []confStep{{write: rawHeader(0x89, 126, []byte{0, 126}, strings.Repeat("p", 126)), close: CloseProtocolError}}},
		{"2.6 unsolicited pong ignored", []confStep{{write: cat(frame(wstest.OpPong, "x"), frame(wstest.OpText, "after")), want: []wstest.Frame{text("after")}}}},
		{"2.10 ten pings at once", []confStep{{write: pings(), want: pongs()}}},
		{"2.11 ten pings in chunks", chunked(pings(), 3, pongs())},
		// 3 reserved bits
		{"3.1 RSV1 on a text frame", []confStep{{write: frame(wstest.OpText|0x40, "x"), close: CloseProtocolError}}},
		{"3.2 text, RSV2 frame, ping at once", []confStep{{write: cat(frame(wstest.OpText, "Hello"), frame(wstest.OpText|0x20, "x"), frame(wstest.OpPing, "p")),
			want: []wstest.Frame{text("Hello")}, close: CloseProtocolError}}},
		{"3.3 text, RSV3 frame, ping frame-wise", []confStep{
			{write: frame(wstest.OpText, "Hello"), want: []wstest.Frame{text("Hello")}},
			{write: cat(frame(wstest.OpText|0x10, "x"), frame(wstest.OpPing, "p")), close: CloseProtocolError}}},
		{"3.4 text, RSV on a ping, ping at once", []confStep{{write: cat(frame(wstest.OpText, "Hello"), frame(wstest.OpPing|0x70, "x"), frame(wstest.OpPing, "p")),
			want: []wstest.Frame{text("Hello")}, close: CloseProtocolError}}},
		// 4 opcodes
		{"4.1.1 reserved data opcode 3", []confStep{{write: frame(0x3, ""), close: CloseProtocolError}}},
		{"4.1.3 text, opcode 5, ping at once", []confStep{{write: cat(frame(wstest.OpText, "Hello"), frame(0x5, "x"), frame(wstest.OpPing, "p")),
			want: []wstest.Frame{text("Hello")}, close: CloseProtocolError}}},
		{"4.2.3 text, opcode 0xC, ping at once", []confStep{{write: cat(frame(wstest.OpText, "Hello"), frame(0xC, "x"), frame(wstest.OpPing, "p")),
			want: []wstest.Frame{text("Hello")}, close: CloseProtocolError}}},
		{"4.2.5 text, opcode 0xF with payload, ping", []confStep{{write: cat(frame(wstest.OpText, "Hello"), frame(0xF, "payload"), frame(wstest.OpPing, "p")),
			want: []wstest.Frame{text("Hello")}, close: CloseProtocolError}}},
		// 5 fragmentation
		{"5.1 fragmented ping", []confStep{{write: cat(frag(false, wstest.OpPing, "a"), frag(true, wstest.OpContinuation, "b")), close: CloseProtocolError}}},
		{"5.3 text in two fragments", []confStep{{write: cat(frag(false, wstest.OpText, "frag"), frag(true, wstest.OpContinuation, "ment")), want: []wstest.Frame{text("fragment")}}}},
		{"5.6 ping between fragments", []confStep{{write: cat(frag(false, wstest.OpText, "frag"), frame(wstest.OpPing, "p"), frag(true, wstest.OpContinuation, "ment")),
			want: []wstest.Frame{pong("p"), text("fragment")}}}},
		{"5.9 continuation without a start", []confStep{{write: cat(frag(true, wstest.OpContinuation, "x"), frame(wstest.OpText, "not echoed")), close: CloseProtocolError}}},
		{"5.15 message, then a second start inside a fragmented one", []confStep{{write: cat(
			frag(false, wstest.OpText, "frag1"), frag(true, wstest.OpContinuation, "frag2"),
			frag(false, wstest.OpContinuation, "frag3"), frag(true, wstest.OpText, "frag4")),
			want: []wstest.Frame{text("frag1frag2")}, close: CloseProtocolError}}},
		{"5.x new text inside a fragmented message", []confStep{{write: cat(frag(false, wstest.OpText, "a"), frame(wstest.OpText, "b")), close: CloseProtocolError}}},
		// 6 UTF-8
		{"6.2 valid UTF-8 split inside code points", []confStep{{write: cat(frag(false, wstest.OpText, "\xce"), frag(false, wstest.OpContinuation, "\xba\xe1"),
			frag(true, wstest.OpContinuation, "\xbd\xb9")), want: []wstest.Frame{text("\xce\xba\xe1\xbd\xb9")}}}},
		{"6.3.1 invalid UTF-8 in one frame", []confStep{{write: frame(wstest.OpText, invalidUTF8), close: CloseInvalidPayload}}},
		{"6.4.1 invalid second fragment fails fast", []confStep{
			{write: frag(false, wstest.OpText, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")},
			{pause: 100 * time.Millisecond, write: frag(false, wstest.OpContinuation, "\xf4\x90\x80\x80"), close: CloseInvalidPayload}}},
		{"6.4.3 invalid chop of one frame fails fast", chops()},
		{"6.x truncated sequence at the end of a message", []confStep{{write: frame(wstest.OpText, "ok\xe1\xbd"), close: CloseInvalidPayload}}},
		{"6.x binary is not checked", []confStep{{write: frame(wstest.OpBinary, invalidUTF8), want: []wstest.Frame{bin(invalidUTF8)}}}},
		// 7 close handling
		{"7.1.1 text then close at once", []confStep{{write: cat(frame(wstest.OpText, "Hello"), closeFrame(1000, "")), want: []wstest.Frame{text("Hello")}, close: CloseNormal}}},
		{"7.1.3 ping after close not answered", []confStep{{write: cat(closeFrame(1000, ""), frame(wstest.OpPing, "p")), close: CloseNormal}}},
		{"7.1.5 fragment, close, continuation", []confStep{{write: cat(frag(false, wstest.OpText, "frag"), closeFrame(1000, ""), frag(true, wstest.OpContinuation, "ment")), close: CloseNormal}}},
		{"7.1.6 many messages then close", []confStep{{write: cat(frame(wstest.OpBinary, "1"), frame(wstest.OpBinary, "2"), frame(wstest.OpBinary, "3"), closeFrame(1000, "")),
			want: []wstest.Frame{bin("1"), bin("2"), bin("3")}, close: CloseNormal}}},
		{"7.3.1 empty close", []confStep{{write: frame(wstest.OpClose, ""), empty: true}}},
		{"7.3.2 1-byte close payload", []confStep{{write: frame(wstest.OpClose, "\x03"), close: CloseProtocolError}}},
		{"7.5.1 invalid UTF-8 reason", []confStep{{write: closeFrame(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), close: CloseProtocolError}}},
		{"7.7.x 1014 is valid", []confStep{{write: closeFrame(1014, ""), close: CloseNormal}}},
		{"7.7.x 4999 echoed", []confStep{{write: closeFrame(4999, ""), close: 4999}}},
		{"7.9.x 1015 invalid", []confStep{{write: closeFrame(1015, ""), close: CloseProtocolError}}},
		{"7.9.x 5000 invalid", []confStep{{write: closeFrame(5000, ""), close: CloseProtocolError}}},
		// 9 limits (limits.max_message_bytes is 16 MiB in this table)
		{"9.1 1 MiB text", []confStep{{write: frame(wstest.OpText, big), want: []wstest.Frame{text(big)}}}},
		{"9.2 1 MiB binary in 64 KiB fragments", fragmented(1<<20, 64<<10)},
		// hostile input (RFC 6455 §5.2)
		{"64-bit length with the top bit set", []confStep{{write: []byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, close: CloseProtocolError}}},
		{"top-bit length after a message", []confStep{{write: cat(frame(wstest.OpBinary, "first"), []byte{0x80, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}),
			want: []wstest.Frame{bin("first")}, close: CloseProtocolError}}},
		{"5 bytes in the 64-bit form", []confStep{{write: rawHeader(0x82, 127, []byte{0, 0, 0, 0, 0, 0, 0, 5}, "hello"), close: CloseProtocolError}}},
		{"5 bytes in the 16-bit form", []confStep{{write: rawHeader(0x82, 126, []byte{0, 5}, "hello"), close: CloseProtocolError}}},
		{"65535 bytes in the 64-bit form", []confStep{{write: rawHeader(0x82, 127, []byte{0, 0, 0, 0, 0, 0, 0xff, 0xff}, ""), close: CloseProtocolError}}},
		{"unmasked frame", []confStep{{write: []byte{0x82, 0x01, 'x'}, close: CloseProtocolError}}},
		{"declared size over the limit", []confStep{{write: rawHeader(0x82, 127, []byte{0, 0, 0, 0, 1, 0, 0, 1}, ""), close: CloseMessageTooBig}}},
	}
}

// chunked writes b in n-byte writes and then expects want.
func chunked(b []byte, n int, want []wstest.Frame) []confStep {
	var steps []confStep
	for len(b) > 0 {
		k := min(n, len(b))
		steps = append(steps, confStep{write: b[:k]})
		b = b[k:]
	}
	steps[len(steps)-1].want = want
	return steps
}

// chops is Autobahn 6.4.3: one text frame sent in three chops, the
// second making it invalid: 1007 must come before the third is sent.
func chops() []confStep {
	valid := "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
	f := frame(wstest.OpText, valid+"\xf4\x90\x80\x80"+"edited")
	hdr := 6 // 2-byte header, 4-byte mask: the payload is under 126 bytes
	return []confStep{
		{write: f[:hdr+len(valid)]},
		{pause: 100 * time.Millisecond, write: f[hdr+len(valid) : hdr+len(valid)+4], close: CloseInvalidPayload},
	}
}

// fragmented sends a binary message of size bytes in frag-byte
// fragments, in one write, and expects it whole.
func fragmented(size, fragSize int) []confStep {
	payload := bytes.Repeat([]byte{0xfe}, size)
	var b []byte
	for off := 0; off < size; off += fragSize {
		op := wstest.OpContinuation
		if off == 0 {
			op = wstest.OpBinary
		}
		b = wstest.AppendFrame(b, off+fragSize >= size, op, payload[off:min(off+fragSize, size)])
	}
	return []confStep{{write: b, want: []wstest.Frame{{Opcode: wstest.OpBinary, Payload: payload}}}}
}

func TestConformance(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		c.Limits.MaxMessageBytes = 16 << 20
		c.Limits.MaxPartialBytes = 64 << 20
		c.Heartbeat.PingInterval = time.Hour // no server ping among the frames under test
	})
	for _, tc := range conformanceCases() {
		t.Run(tc.name, func(t *testing.T) {
			c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
			for i, st := range tc.steps {
				if st.pause > 0 {
					time.Sleep(st.pause) // the peer's pause is the input under test, not synchronisation
				}
				if st.write != nil {
					if _, err := c.Write(st.write); err != nil {
						t.Fatalf("step %d: write: %v", i, err)
					}
				}
				for j, want := range st.want {
					got, err := c.ReadFrame(10 * time.Second)
					if err != nil {
						t.Fatalf("step %d: frame %d: want opcode %#x (%d bytes), got error %v", i, j, want.Opcode, len(want.Payload), err)
					}
					if got.Opcode != want.Opcode || !bytes.Equal(got.Payload, want.Payload) {
						t.Fatalf("step %d: frame %d: got opcode %#x payload %q, want opcode %#x payload %q", i, j,
							got.Opcode, abbrev(got.Payload), want.Opcode, abbrev(want.Payload))
					}
				}
				if st.close == 0 && !st.empty {
					continue
				}
				got, err := c.ReadFrame(10 * time.Second)
				if err != nil || got.Opcode != wstest.OpClose {
					t.Fatalf("step %d: want a close frame, got opcode %#x payload %q err %v", i, got.Opcode, abbrev(got.Payload), err)
				}
				if st.empty && len(got.Payload) != 0 || !st.empty && got.CloseCode() != st.close {
					t.Fatalf("step %d: close payload %q (code %d), want code %d (empty: %v)", i, got.Payload, got.CloseCode(), st.close, st.empty)
				}
				// Nothing follows the close frame: no pong for a ping sent
				// after the violation, no echo.
				_ = c.Conn.(interface{ CloseWrite() error }).CloseWrite()
				if f, err := c.ReadFrame(10 * time.Second); !errors.Is(err, io.EOF) {
					t.Fatalf("step %d: after the close frame: got opcode %#x payload %q err %v, want end of stream", i, f.Opcode, abbrev(f.Payload), err)
				}
				return
			}
			// No close expected: the connection is still healthy.
			if err := c.Echo([]byte("still open")); err != nil {
				t.Fatalf("echo after the case: %v", err)
			}
		})
	}
	checkDrained(t, ts.Server)
}

// checkDrained asserts that a server whose clients have all gone holds
// nothing: no connection, no buffered byte, no partial-message budget,
// and recovered no panic.
func checkDrained(t *testing.T, srv *Server) {
	t.Helper()
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		st := srv.Stats()
		if st.Connections != 0 || st.BufferedBytes != 0 || st.PanicsTotal != 0 {
			return fmt.Errorf("connections=%d buffered_bytes=%d panics_total=%d, want 0 0 0", st.Connections, st.BufferedBytes, st.PanicsTotal)
		}
		if !srv.partial.sem.TryAcquire(srv.cfg.Limits.MaxPartialBytes) {
			return errors.New("limits.max_partial_bytes not fully released")
		}
		srv.partial.release(srv.cfg.Limits.MaxPartialBytes)
		return nil
	})
}

func abbrev(p []byte) string {
	if len(p) > 40 {
		return fmt.Sprintf("%q…(%d bytes)", p[:40], len(p))
	}
	return string(p)
}
