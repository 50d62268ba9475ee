package service

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// fastHeartbeat shrinks the heartbeat so a silent peer is reaped within
// a fraction of a second.
func fastHeartbeat(c *Config) {
	c.Heartbeat.PingInterval = 200 * time.Millisecond
	c.Heartbeat.PongTimeout = 200 * time.Millisecond
}

// TestHeartbeatReapsSilentPeer: a peer that neither answers pings nor
// sends anything is closed with 4000 after ping_interval + pong_timeout,
// and its descriptor is released.
func TestHeartbeatReapsSilentPeer(t *testing.T) {
	for _, path := range []string{"/ws/echo", "/ws/topics/quiet"} {
		t.Run(path, func(t *testing.T) {
			ts := runServer(t, fastHeartbeat)
			before, ok := countOpenFDs()
			if !ok {
				t.Fatal("cannot count descriptors")
			}
			c := wstest.MustDialRaw(t, ts.wsURL(path))
			wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				return expectClose(ts, CloseHeartbeatTimeout, reasonHeartbeat, InitiatorServer)
			})
			if hb := ts.obs.snapshot().heartbeat; hb != 1 {
				t.Fatalf("heartbeat timeouts %d, want 1", hb)
			}
			waitIdle(t, ts)
			// Only the client's own end is still open.
			wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				n, ok := countOpenFDs()
				if !ok {
					return fmt.Errorf("cannot count descriptors")
				}
				if n > before+1 {
					return fmt.Errorf("%d descriptors open, want at most %d", n, before+1)
				}
				return nil
			})
			// The client saw pings, then the close frame, then EOF.
			pings := 0
			for {
				f, err := c.ReadFrame(10 * time.Second)
				if err != nil {
					t.Fatalf("no close frame after %d pings: %v", pings, err)
				}
				if f.Opcode == wstest.OpPing {
					pings++
					continue
				}
				if f.Opcode != wstest.OpClose || f.CloseCode() != CloseHeartbeatTimeout {
					t.Fatalf("frame %d %q, want close 4000", f.Opcode, f.Payload)
				}
				break
			}
			if pings < 1 {
				t.Fatalf("no ping before the heartbeat timeout")
			}
			if _, err := c.ReadFrame(10 * time.Second); !isEOF(err) {
				t.Fatalf("after close: %v, want EOF", err)
			}
			if st := ts.Stats(); st.HeartbeatTimeoutsTotal != 1 {
				t.Fatalf("heartbeat_timeouts_total %d, want 1", st.HeartbeatTimeoutsTotal)
			}
		})
	}
}

// TestHeartbeatKeepsLivePeers: a peer that answers pings, one that
// pings on its own, and one that only sends data all stay connected for
// many heartbeat periods.
func TestHeartbeatKeepsLivePeers(t *testing.T) {
	// A pong timeout three times the ping interval leaves a loaded
	// machine time to answer; the reap deadline is still short.
	ts := runServer(t, func(c *Config) {
		c.Heartbeat.PingInterval = 200 * time.Millisecond
		c.Heartbeat.PongTimeout = 600 * time.Millisecond
	})
	// Each live peer must outlive this many reap deadlines.
	const periods = 3
	reap := ts.cfg.Heartbeat.PingInterval + ts.cfg.Heartbeat.PongTimeout
	pingsPerPeriod := int64(reap / ts.cfg.Heartbeat.PingInterval)

	_, answering := wstest.DialGWS(t, ts.wsURL("/ws/echo"), true)

	var pinged, sent atomic.Int64
	every := reap / 8
	const maxFrames = 1000 // bound: ≥ 8×periods frames are needed
	for _, p := range []struct {
		opcode byte
		count  *atomic.Int64
	}{{wstest.OpPing, &pinged}, {wstest.OpBinary, &sent}} {
		c := wstest.MustDialRaw(t, ts.wsURL("/ws/topics/live"))
		defer writeEvery(c, p.opcode, []byte("x"), every, maxFrames, p.count)()
	}

	wstest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		// Pings come every ping_interval, the raw peers' frames every
		// reap/8: these counts span periods reap deadlines.
		if answering.Pings() < pingsPerPeriod*periods || pinged.Load() < 8*periods || sent.Load() < 8*periods {
			return fmt.Errorf("pings answered %d, pinged %d, sent %d", answering.Pings(), pinged.Load(), sent.Load())
		}
		return nil
	})
	if st := ts.Stats(); st.Connections != 3 || st.HeartbeatTimeoutsTotal != 0 {
		t.Fatalf("stats %+v, want 3 connections and no heartbeat timeouts", st)
	}
	if n := len(ts.obs.snapshot().closes); n != 0 {
		t.Fatalf("%d sessions closed, want 0", n)
	}
}

// TestHeartbeatSparesPausedConnection: a connection whose reading is
// paused (it floods echoes and does not read) is not idle: the heartbeat
// must not reap it, however long the pause (below max_paused).
func TestHeartbeatSparesPausedConnection(t *testing.T) {
	ts := runServerWith(t, func(c *Config) {
		fastHeartbeat(c)
		c.Backpressure.MaxPaused = 10 * time.Minute
		c.Backpressure.WriteTimeout = 10 * time.Minute
	}, smallSendBuffer)
	c := pausedFlooder(t, ts)
	// Watch for ten reap deadlines: the connection stays, still paused.
	window := 10 * (ts.cfg.Heartbeat.PingInterval + ts.cfg.Heartbeat.PongTimeout)
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		st := ts.Stats()
		if st.Connections != 1 || st.Paused != 1 || st.HeartbeatTimeoutsTotal != 0 {
			t.Fatalf("while paused: %+v, want 1 connection, 1 paused, no heartbeat timeout", st)
		}
	}
	abortConn(c.Conn)
	waitIdle(t, ts)
}

// abortConn closes with SO_LINGER 0: the peer gets a TCP reset, no FIN
// and no close frame.
func abortConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// TestHandshakeTimeout: connections that do not complete a request in
// handshake_timeout are closed: one that sends nothing, one that trickles
// header bytes (slowloris), and an idle keep-alive connection.
func TestHandshakeTimeout(t *testing.T) {
	ts := runServer(t, func(c *Config) { c.Limits.HandshakeTimeout = 300 * time.Millisecond })
	addr := ts.Addr().String()
	// closedByServer reads until the server closes the connection.
	closedByServer := func(c net.Conn) error {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("connection still open after 20s")
		}
		return nil
	}
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("silent", func(t *testing.T) {
		if err := closedByServer(dial()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("slowloris", func(t *testing.T) {
		c := dial()
		req := upgradeRequest("/ws/echo")
		done := make(chan struct{})
		trickled := make(chan int, 1)
		go func() {
			n := 0
			defer func() { trickled <- n }()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			// One byte per tick: the whole request would take seconds,
			// far above the 300 ms timeout.
			for ; n < len(req)-1; n++ {
				select {
				case <-done:
					return
				case <-tick.C:
				}
				if _, err := c.Write([]byte{req[n]}); err != nil {
					return
				}
			}
		}()
		err := closedByServer(c)
		close(done)
		n := <-trickled
		if err != nil {
			t.Fatal(err)
		}
		if n >= len(req)-1 {
			t.Fatalf("the whole request was trickled before the server closed the connection")
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial()
		if _, err := io.WriteString(c, "GET /nope HTTP/1.1\r\nHost: wsd\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if err := closedByServer(c); err != nil {
			t.Fatal(err)
		}
	})
	waitIdle(t, ts)
}

// TestWriteTimeoutDespitePings: a subscriber that never reads, with a
// full TCP window, is closed after write_timeout although it keeps
// sending pings all along: inbound traffic does not extend a stuck write
// (separate read and write deadlines).
func TestWriteTimeoutDespitePings(t *testing.T) {
	ts := runServer(t, func(c *Config) {
		c.Backpressure.WriteTimeout = time.Second
		// The drop policy never closes, so only the write timeout can.
		c.Backpressure.SlowConsumer = SlowConsumerDrop
	})
	url := ts.wsURL("/ws/topics/stuck")
	sub := wstest.MustDialRaw(t, url, wstest.WithReadBuffer(4096))
	pub, _ := wstest.DialGWS(t, url, true)
	waitStats(t, ts, "2 subscribers", func(st Stats) bool { return st.Subscribers == 2 })
	var pings atomic.Int64
	// Bounded: a minute of pings.
	defer writeEvery(sub, wstest.OpPing, []byte("alive"), 20*time.Millisecond, 3000, &pings)()

	payload := make([]byte, 16<<10)
	closed := func() bool { return expectClose(ts, closeAbnormal, reasonWriteTimeout, InitiatorAbnormal) == nil }
	for i := 0; i < 4000 && !closed(); i++ { // bounded: 64 MiB
		if err := pub.WriteMessage(gws.OpcodeBinary, payload); err != nil {
			t.Fatal(err)
		}
	}
	wstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		return expectClose(ts, closeAbnormal, reasonWriteTimeout, InitiatorAbnormal)
	})
	if p := pings.Load(); p < 10 {
		t.Fatalf("only %d pings sent before the write timeout", p)
	}
	snap := ts.obs.snapshot()
	if snap.heartbeat != 0 {
		t.Fatalf("%d heartbeat timeouts: the close must come from the write timeout", snap.heartbeat)
	}
	if st := ts.Stats(); st.Subscribers != 1 || st.Connections != 1 || st.WriteTimeoutsTotal != 1 {
		t.Fatalf("after the write timeout: %+v, want the publisher alone and write_timeouts_total 1", st)
	}
}

// TestMessageRateShaping: over limits.message_rate the server delays
// reading; nothing is dropped and the connection stays open.
func TestMessageRateShaping(t *testing.T) {
	const rate, burst, n = 50, 5, 60
	ts := runServer(t, func(c *Config) { c.Limits.MessageRate, c.Limits.MessageBurst = rate, burst })
	conn, h := wstest.DialGWS(t, ts.wsURL("/ws/echo"), true)
	start := time.Now()
	for i := range n {
		if err := conn.WriteMessage(gws.OpcodeBinary, seqPayload(i, 64)); err != nil {
			t.Fatal(err)
		}
	}
	wstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if h.Count() != n {
			return fmt.Errorf("%d of %d echoed", h.Count(), n)
		}
		return nil
	})
	elapsed := time.Since(start)
	checkOrdered(t, h.Messages(), n)
	// Shaping is a lower bound on time: after the burst, reading the
	// other n-burst messages takes at least (n-burst)/rate. Allow 20%
	// for the token bucket's rounding; no upper bound is asserted.
	floor := time.Duration(n-burst) * time.Second / rate * 8 / 10
	if elapsed < floor {
		t.Fatalf("%d messages echoed in %s at %d/s (burst %d): not shaped (floor %s)", n, elapsed, rate, burst, floor)
	}
	if st := ts.Stats(); st.Connections != 1 || len(ts.obs.snapshot().closes) != 0 {
		t.Fatalf("after shaping: %+v, want the connection open", st)
	}
}
