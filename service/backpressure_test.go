package service

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// TestSendBufferHysteresis drives the state machine through levels and
// checks the transitions: pause at pause_bytes, resume only below
// resume_bytes, no flapping in between, one warn per episode.
func TestSendBufferHysteresis(t *testing.T) {
	cfg := BackpressureConfig{WarnBytes: 100, PauseBytes: 1000, ResumeBytes: 500, MaxBytes: 2000, SlowConsumer: SlowConsumerClose}
	type step struct {
		delta int64 // > 0 add, < 0 done
		want  transition
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"warn once then pause", []step{{50, 0}, {60, transWarn}, {100, 0}, {800, transPause}}},
		{"warn and pause together", []step{{1000, transWarn | transPause}}},
		{"no flapping between resume and pause", []step{
			{1000, transWarn | transPause},
			{-400, 0}, {399, 0}, {-399, 0}, {300, 0}, {-300, 0}, // 600..999: stays paused
			{-101, transResume},           // 499 < 500
			{400, 0}, {-400, 0}, {500, 0}, // 499..999 again: stays running
			{1, transPause},
		}},
		{"warn episode ends below half the warn level", []step{
			{150, transWarn}, {-60, 0}, {60, 0}, {-101, 0}, {100, transWarn},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var totals loadCounters
			b := newSendBuffer(&cfg, &totals, new(atomic.Int64))
			var level int64
			for i, st := range tt.steps {
				var got transition
				if st.delta > 0 {
					got, _ = b.add(st.delta)
				} else {
					got, _ = b.done(-st.delta)
				}
				level += st.delta
				if got != st.want {
					t.Fatalf("step %d (%+d → %d): transition %03b, want %03b", i, st.delta, level, got, st.want)
				}
				if totals.buffered.Load() != level {
					t.Fatalf("step %d: total buffered %d, want %d", i, totals.buffered.Load(), level)
				}
				wantPaused := int64(0)
				if b.isPaused() {
					wantPaused = 1
				}
				if totals.paused.Load() != wantPaused {
					t.Fatalf("step %d: total paused %d, want %d", i, totals.paused.Load(), wantPaused)
				}
			}
			b.close()
			if totals.buffered.Load() != 0 || totals.paused.Load() != 0 {
				t.Fatalf("after close: totals %d bytes %d paused, want 0 0", totals.buffered.Load(), totals.paused.Load())
			}
		})
	}
}

// TestSendBufferFanoutPolicies checks the slow-consumer verdicts.
func TestSendBufferFanoutPolicies(t *testing.T) {
	for _, policy := range []string{SlowConsumerClose, SlowConsumerDrop} {
		t.Run(policy, func(t *testing.T) {
			cfg := BackpressureConfig{WarnBytes: 100, PauseBytes: 1000, ResumeBytes: 500, MaxBytes: 2000, SlowConsumer: policy}
			var totals loadCounters
			b := newSendBuffer(&cfg, &totals, new(atomic.Int64))
			if v, _, _ := b.offerFanout(2000); v != offerAccept {
				t.Fatalf("at max: verdict %d, want accept", v)
			}
			want := offerEvict
			if policy == SlowConsumerDrop {
				want = offerDrop
			}
			if v, _, _ := b.offerFanout(1); v != want {
				t.Fatalf("over max: verdict %d, want %d", v, want)
			}
			if policy == SlowConsumerDrop {
				b.done(1000) // 1000: drained but not below resume
				if v, _, _ := b.offerFanout(1); v != offerDrop {
					t.Fatalf("still dropping above resume: verdict %d", v)
				}
				b.done(600) // 400 < resume
				if v, _, _ := b.offerFanout(1); v != offerAccept {
					t.Fatalf("drained below resume: verdict %d, want accept", v)
				}
			}
		})
	}
}

// TestEchoLosslessUnderPause: a client writes 50 MiB without reading, the
// server pauses reading (bounded memory), then the client reads
// everything back, in order, nothing lost.
func TestEchoLosslessUnderPause(t *testing.T) {
	ts := runServer(t, nil)
	const msgSize = 32 << 10
	const total = 50 << 20
	const count = total / msgSize

	conn, h := wstest.DialGWS(t, ts.wsURL("/ws/echo"), false)
	var next atomic.Int64
	var orderErr atomic.Value
	h.OnData = func(b []byte) {
		want := next.Add(1) - 1
		if got := int64(binary.BigEndian.Uint64(b)); got != want || len(b) != msgSize {
			orderErr.CompareAndSwap(nil, fmt.Sprintf("message %d: got seq %d len %d", want, got, len(b)))
		}
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseHeap := ms.HeapAlloc

	writeErr := make(chan error, 1)
	go func() {
		buf := make([]byte, msgSize)
		for i := range count {
			binary.BigEndian.PutUint64(buf, uint64(i))
			if err := conn.WriteMessage(gws.OpcodeBinary, buf); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()

	// The server must pause reading while the client does not read.
	var peakBuffered int64
	var peakHeap uint64
	wstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		st := ts.Load()
		peakBuffered = max(peakBuffered, st.BufferedBytes)
		if st.Paused < 1 {
			return fmt.Errorf("not paused yet: %+v", st)
		}
		return nil
	})
	// While paused, memory stays bounded even though the client keeps
	// trying to write (its writes block on TCP flow control).
	for range 20 {
		st := ts.Load()
		peakBuffered = max(peakBuffered, st.BufferedBytes)
		runtime.ReadMemStats(&ms)
		peakHeap = max(peakHeap, ms.HeapAlloc)
		time.Sleep(10 * time.Millisecond)
	}
	bound := ts.cfg.Backpressure.PauseBytes + int64(ts.cfg.Limits.MaxMessageBytes)
	if peakBuffered > bound {
		t.Fatalf("buffered %d bytes while paused, bound %d", peakBuffered, bound)
	}
	if grown := int64(peakHeap) - int64(baseHeap); grown > 16<<20 {
		t.Fatalf("heap grew by %d MiB while paused (50 MiB offered)", grown>>20)
	}

	go conn.ReadLoop()
	if err := <-writeErr; err != nil {
		t.Fatalf("client write: %v", err)
	}
	wstest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if n := next.Load(); n != count {
			return fmt.Errorf("received %d of %d echoes", n, count)
		}
		return nil
	})
	if v := orderErr.Load(); v != nil {
		t.Fatal(v)
	}
	snap := ts.obs.snapshot()
	if snap.events[BackpressurePause] < 1 || snap.events[BackpressureResume] < 1 || snap.events[BackpressureWarn] < 1 {
		t.Fatalf("backpressure events %v, want warn, pause and resume", snap.events)
	}
	if snap.events[BackpressurePause] != snap.events[BackpressureResume] {
		t.Fatalf("pauses %d != resumes %d after draining", snap.events[BackpressurePause], snap.events[BackpressureResume])
	}
	// No flapping: between two pauses the buffer must drain from
	// pause_bytes to below resume_bytes, so at most total/(pause-resume)
	// pauses fit in the stream; a threshold without hysteresis flips
	// about once per message (count of them).
	bp := ts.cfg.Backpressure
	if limit := int(total / (bp.PauseBytes - bp.ResumeBytes)); snap.events[BackpressurePause] > limit {
		t.Fatalf("%d pauses for %d messages: flapping (hysteresis allows at most %d)", snap.events[BackpressurePause], count, limit)
	}
	t.Logf("%d MiB echoed in %d messages: %d pause/resume cycles, peak buffered %d", total>>20, count, snap.events[BackpressurePause], peakBuffered)
	// Every transition is logged with the connection and its buffer.
	for _, l := range []struct {
		level slog.Level
		msg   string
		n     int
		ok    func(b int64) bool
	}{
		{slog.LevelWarn, "send buffer above warn level", snap.events[BackpressureWarn], func(b int64) bool { return b >= bp.WarnBytes }},
		{slog.LevelWarn, "send buffer critical: reading paused", snap.events[BackpressurePause], func(b int64) bool { return b >= bp.PauseBytes }},
		{slog.LevelInfo, "send buffer drained: reading resumed", snap.events[BackpressureResume], func(b int64) bool { return b < bp.ResumeBytes }},
	} {
		lines := ts.logs.find(l.level, l.msg, map[string]string{"conn_id": "1"})
		if len(lines) != l.n {
			t.Fatalf("%d %q lines, want %d", len(lines), l.msg, l.n)
		}
		for _, line := range lines {
			if b, err := strconv.ParseInt(line.attrs["buffered_bytes"], 10, 64); err != nil || !l.ok(b) {
				t.Fatalf("%q with buffered_bytes=%q", l.msg, line.attrs["buffered_bytes"])
			}
		}
	}
	st := ts.Load()
	if st.Paused != 0 || st.BufferedBytes != 0 {
		t.Fatalf("after drain: %+v", st)
	}
	_ = conn.WriteClose(1000, nil)
	<-h.Closed()
	waitIdle(t, ts)
}

// TestMaxPausedCloses1013: a connection that stays paused longer than
// max_paused is closed with 1013; pausing does not trip the heartbeat.
func TestMaxPausedCloses1013(t *testing.T) {
	// A 4 KiB server send buffer keeps the backlog the client reads at
	// the end small: through a 4 KiB receive window, megabytes of kernel
	// buffers take minutes to read.
	ts := runServerWith(t, func(c *Config) {
		c.Backpressure.MaxPaused = 1500 * time.Millisecond
		c.Heartbeat.PingInterval = 100 * time.Millisecond
		c.Heartbeat.PongTimeout = 100 * time.Millisecond
	}, smallSendBuffer)
	rc := pausedFlooder(t, ts)
	// The peer does not read, so the close frame is best effort: the
	// server's record says 1013, and the client's stream ends either with
	// that frame or with EOF — never a hang.
	code, err := rc.ReadUntilClose(30 * time.Second)
	if err == nil && code != CloseTryAgainLater {
		t.Fatalf("close code %d, want 1013", code)
	}
	if err != nil && !isEOF(err) {
		t.Fatalf("stream ended with %v, want close frame or EOF", err)
	}
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		return expectClose(ts, CloseTryAgainLater, reasonPausedTooLong, InitiatorServer)
	})
	if hb := ts.obs.snapshot().heartbeat; hb != 0 {
		t.Fatalf("%d heartbeat timeouts for a paused connection, want 0", hb)
	}
	waitIdle(t, ts)
}

// TestWriteWatchdog drives the send buffer's watchdog with a fake clock:
// only writes pending with none completing for write_timeout are a
// stall; completions (data or control) restart the window, frames in
// are not progress, and an idle connection never stalls however long
// it has been since its last write.
func TestWriteWatchdog(t *testing.T) {
	const wt = 10 * time.Second
	type op struct {
		at     time.Duration // clock reading for the op
		action string        // add, done, ctl, ctlok, ctlfail, check
		want   bool          // for check
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{"idle never stalls", []op{{0, "check", false}, {time.Hour, "check", false}}},
		{"idle for long, then a write: the window starts at the write", []op{
			{time.Hour, "add", false}, {time.Hour + wt, "check", false}, {time.Hour + wt + 1, "check", true},
		}},
		{"a stuck data write", []op{{0, "add", false}, {wt, "check", false}, {wt + 1, "check", true}}},
		{"completions restart the window", []op{
			{0, "add", false}, {0, "add", false}, {8 * time.Second, "done", false},
			{wt + 1, "check", false}, {18*time.Second + 1, "check", true},
		}},
		{"drained: no stall", []op{{0, "add", false}, {time.Second, "done", false}, {time.Hour, "check", false}}},
		{"queueing more does not restart the window", []op{
			{0, "add", false}, {9 * time.Second, "add", false}, {wt + 1, "check", true},
		}},
		{"a stuck pong (client pings, never reads)", []op{
			{0, "ctl", false}, {wt + 1, "check", true},
		}},
		{"a written ping is progress", []op{
			{0, "add", false}, {0, "ctl", false}, {9 * time.Second, "ctlok", false}, {wt + 1, "check", false},
		}},
		{"a failed control write is not progress", []op{
			{0, "add", false}, {0, "ctl", false}, {9 * time.Second, "ctlfail", false}, {wt + 1, "check", true},
		}},
		{"control queued behind data does not restart the window", []op{
			{0, "add", false}, {9 * time.Second, "ctl", false}, {wt + 1, "check", true},
		}},
	}
	cfg := BackpressureConfig{WarnBytes: 1 << 20, PauseBytes: 2 << 20, ResumeBytes: 1 << 20, MaxBytes: 4 << 20,
		MaxPaused: time.Minute, WriteTimeout: wt, SlowConsumer: SlowConsumerClose}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var totals loadCounters
			clock := new(atomic.Int64)
			b := newSendBuffer(&cfg, &totals, clock)
			for i, o := range tt.ops {
				clock.Store(int64(o.at))
				switch o.action {
				case "add":
					b.add(100)
				case "done":
					b.done(100)
				case "ctl":
					b.addControl()
				case "ctlok":
					b.doneControl(true)
				case "ctlfail":
					b.doneControl(false)
				case "check":
					if got := b.stalled(int64(o.at)); got != o.want {
						t.Fatalf("op %d at %v: stalled = %v, want %v", i, o.at, got, o.want)
					}
				}
			}
		})
	}
}

// TestPausedSessionEndsWhenWritesFail: a session paused by backpressure
// whose peer resets ends as soon as its queued writes fail, not at
// max_paused: the failed writes leave the send buffer (they resume the
// paused reader, which then sees the broken connection).
func TestPausedSessionEndsWhenWritesFail(t *testing.T) {
	ts := runServerWith(t, func(c *Config) {
		// Neither max_paused nor the write watchdog may end it first.
		c.Backpressure.MaxPaused, c.Backpressure.WriteTimeout = time.Hour, time.Hour
	}, smallSendBuffer)
	c := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), wstest.WithReadBuffer(4096))
	payload := make([]byte, 16<<10)
	for range 32 { // 512 KiB of echoes, above pause_bytes, never read
		if err := c.WriteFrame(wstest.OpBinary, payload); err != nil {
			t.Fatal(err)
		}
	}
	wstest.CheckFor(t, 20*time.Second, 5*time.Millisecond, func() error {
		if p := ts.Load().Paused; p != 1 {
			return fmt.Errorf("paused=%d, want 1 before the reset", p)
		}
		return nil
	})
	abortConn(c.Conn)
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := ts.Stats(); st.Connections != 0 || st.Paused != 0 || st.BufferedBytes != 0 {
			return fmt.Errorf("after the peer's reset (max_paused and write_timeout 1h): connections=%d paused=%d buffered_bytes=%d, want 0 0 0 (failed writes must leave the send buffer)",
				st.Connections, st.Paused, st.BufferedBytes)
		}
		return nil
	})
}
