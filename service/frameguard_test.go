package service

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// chunkReader yields its input in reads of at most n bytes.
type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n, len(r.b))
	copy(p, r.b[:k])
	r.b = r.b[k:]
	return k, nil
}

// guardScan runs input through a guard in reads of chunk bytes and
// returns the bytes it let through and why it stopped (nil: it did not).
func guardScan(input []byte, chunk, max int) ([]byte, *guardEnd) {
	g := newFrameGuard(&chunkReader{b: input, n: chunk}, max)
	var out []byte
	buf := make([]byte, 64)
	for {
		if g.end != nil {
			return out, g.end
		}
		n, err := g.src.Read(buf)
		if n > 0 {
			k := g.scan(buf[:n])
			out = append(out, buf[:k]...)
		}
		if err != nil {
			return out, g.end
		}
	}
}

// TestFrameGuardSplits: the guard's verdict and the bytes it lets
// through do not depend on how the stream is cut into reads: each case
// is run with reads of every size from 1 byte to the whole input.
func TestFrameGuardSplits(t *testing.T) {
	tests := []struct {
		name   string
		input  []byte
		max    int
		code   uint16 // 0: no violation
		peer   bool   // ends with the peer's close frame
		passed int    // bytes let through
	}{
		{"two messages", cat(frame(wstest.OpBinary, "abc"), frame(wstest.OpText, "\u00e9\u00e9")), 100, 0, false, 19},
		{"fragments and a ping", cat(frag(false, wstest.OpText, "\xe2\x82"), frame(wstest.OpPing, ""), frag(true, wstest.OpContinuation, "\xac")), 100, 0, false, 21},
		{"top-bit length", []byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, 100, CloseProtocolError, false, 13},
		{"message then non-minimal length", cat(frame(wstest.OpBinary, "ok"), rawHeader(0x82, 126, []byte{0, 5}, "hello")), 100, CloseProtocolError, false, 8 + 7},
		{"RSV1 decided on the first two bytes", frame(wstest.OpText|0x40, "x"), 100, CloseProtocolError, false, 1},
		{"fragments over the limit", cat(frag(false, wstest.OpBinary, strings.Repeat("a", 60)), frag(true, wstest.OpContinuation, strings.Repeat("b", 60))), 100, CloseMessageTooBig, false, 66 + 5},
		{"invalid UTF-8 in the second fragment", cat(frag(false, wstest.OpText, "ab"), frag(true, wstest.OpContinuation, "\xffcd")), 100, CloseInvalidPayload, false, 8 + 6},
		{"incomplete sequence at the end", frame(wstest.OpText, "a\xe2\x82"), 100, CloseInvalidPayload, false, 8},
		{"close frame", cat(frame(wstest.OpBinary, "x"), closeFrame(1000, "bye"), frame(wstest.OpPing, "")), 100, 0, true, 7 + 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for chunk := 1; chunk <= len(tc.input); chunk++ {
				out, end := guardScan(tc.input, chunk, tc.max)
				switch {
				case tc.code == 0 && !tc.peer && end != nil:
					t.Fatalf("reads of %d: stopped with %+v, want no stop", chunk, end)
				case tc.code != 0 && (end == nil || end.code != tc.code):
					t.Fatalf("reads of %d: stopped with %+v, want code %d", chunk, end, tc.code)
				case tc.peer && (end == nil || !end.peerClose || end.peerCode != 1000 || string(end.peerText) != "bye"):
					t.Fatalf("reads of %d: stopped with %+v, want the peer's close 1000 \"bye\"", chunk, end)
				}
				if len(out) != tc.passed || !bytes.Equal(out, tc.input[:len(out)]) {
					t.Fatalf("reads of %d: let %d bytes through, want the first %d of the input", chunk, len(out), tc.passed)
				}
			}
		})
	}
}

// TestUTF8StreamMatchesValid: validating in pieces agrees with
// utf8.Valid on the whole, for every cut of a set of tricky inputs.
func TestUTF8StreamMatchesValid(t *testing.T) {
	inputs := []string{"", "abc", "\u00e9", "\u20ac", "\U0001F600", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf",
		"\xe0\x80\xaf", "a\xffb", "\xef\xbf\xbd", "\xf0\x9f\x98", "\x80", "\U0010FFFF\u0800"}
	for _, in := range inputs {
		for cut := 0; cut <= len(in); cut++ {
			for cut2 := cut; cut2 <= len(in); cut2++ {
				var u utf8Stream
				ok := u.feed([]byte(in[:cut])) && u.feed([]byte(in[cut:cut2])) && u.feed([]byte(in[cut2:])) && u.complete()
				if ok != utf8.ValidString(in) {
					t.Fatalf("%q cut at %d,%d: stream says %v, utf8.Valid says %v", in, cut, cut2, ok, utf8.ValidString(in))
				}
			}
		}
	}
}

// TestReadPathPanic: a panic inside one connection's read path closes
// that connection with 1011, is logged and counted, and the server goes
// on serving the others.
func TestReadPathPanic(t *testing.T) {
	var victim atomic.Uint64
	ts := runServerWith(t, nil, func(s *Server) {
		s.testReadHook = func(ss *session) {
			if ss.id == victim.Load() {
				panic("injected")
			}
		}
	})
	other := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	if err := other.Echo([]byte("before")); err != nil {
		t.Fatal(err)
	}
	victim.Store(2) // the next connection
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	if err := c.WriteFrame(wstest.OpBinary, []byte("x")); err != nil {
		t.Fatal(err)
	}
	expectServerClose(t, c, CloseInternalError)
	if err := other.Echo([]byte("after")); err != nil {
		t.Fatalf("the other connection after the panic: %v", err)
	}
	waitLog(t, ts, slog.LevelError, "panic recovered; closing the connection", map[string]string{"panic": "injected", "where": "read"})
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := ts.Stats(); st.PanicsTotal != 1 || st.Connections != 1 {
			return fmt.Errorf("panics_total=%d connections=%d, want 1 1", st.PanicsTotal, st.Connections)
		}
		return nil
	})
	other.Close()
	waitIdle(t, ts)
}

// TestPingFloodBounded: a peer that floods pings and does not read gets
// pongs in order, the last one for its newest ping, and never more than
// maxQueuedPongs queued.
func TestPingFloodBounded(t *testing.T) {
	ts := runServer(t, func(c *Config) { c.Heartbeat.PingInterval = time.Hour })
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), wstest.WithReadBuffer(4096))
	const n = 20000
	var flood []byte
	for i := range n {
		flood = append(flood, frame(wstest.OpPing, fmt.Sprintf("%06d", i))...)
	}
	var maxQueued atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var buf []*session
			ts.sessions.each(buf, func(s *session) {
				s.pongs.mu.Lock()
				q := int64(s.pongs.queued)
				s.pongs.mu.Unlock()
				if q > maxQueued.Load() {
					maxQueued.Store(q)
				}
			})
			time.Sleep(time.Millisecond)
		}
	}()
	if _, err := c.Write(flood); err != nil {
		t.Fatal(err)
	}
	last, got := -1, 0
	for last != n-1 {
		f, err := c.ReadFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d pongs (last %d): %v", got, last, err)
		}
		if f.Opcode != wstest.OpPong {
			t.Fatalf("frame %d: opcode %#x, want pong", got, f.Opcode)
		}
		var i int
		fmt.Sscanf(string(f.Payload), "%d", &i)
		if i <= last {
			t.Fatalf("pong for ping %d after the pong for ping %d: an older payload after a newer", i, last)
		}
		last, got = i, got+1
	}
	close(stop)
	<-sampled
	if m := maxQueued.Load(); m > maxQueuedPongs {
		t.Fatalf("%d pongs queued at once, want at most %d", m, maxQueuedPongs)
	}
	t.Logf("%d pings, %d pongs, at most %d queued", n, got, maxQueued.Load())
}

// TestPartialMessages: peers that send the header of a large message and
// stall hold no more than limits.max_partial_bytes between them: the
// others wait, not read; limits.frame_timeout closes the stalled ones
// with 1008, which frees the budget for a client that completes its
// message.
func TestPartialMessages(t *testing.T) {
	const msg = 64 << 10
	ts := runServer(t, func(c *Config) {
		c.Limits.MaxMessageBytes = msg
		c.Limits.MaxPartialBytes = 4 * msg
		c.Limits.FrameTimeout = time.Second
	})
	header := []byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4} // 65536 declared: the 8-byte form is minimal
	stalled := make([]*wstest.Conn, 8)
	for i := range stalled {
		stalled[i] = wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
		if _, err := stalled[i].Write(append(bytes.Clone(header), make([]byte, msg-1)...)); err != nil {
			t.Fatal(err)
		}
	}
	// Four hold the budget, four wait for it; none gets further.
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if ts.partial.sem.TryAcquire(1) {
			ts.partial.release(1)
			return fmt.Errorf("partial budget not exhausted by %d stalled peers", len(stalled))
		}
		return nil
	})
	for i, c := range stalled {
		if code, err := c.ReadUntilClose(10 * time.Second); err != nil || code != ClosePolicyViolation {
			t.Fatalf("stalled peer %d: close %d (%v), want 1008", i, code, err)
		}
		c.Close() // the server lingers for this before it releases the budget
	}
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	if err := c.Echo(bytes.Repeat([]byte{7}, msg)); err != nil {
		t.Fatalf("a complete message after the stalled peers: %v", err)
	}
	if st := ts.Stats(); st.FrameTimeoutsTotal != int64(len(stalled)) {
		t.Fatalf("frame_timeouts_total=%d, want %d", st.FrameTimeoutsTotal, len(stalled))
	}
	c.Close()
	checkDrained(t, ts.Server)
}
