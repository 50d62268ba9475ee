package service

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// closeMode is how one connection of TestCleanupAfterMixedCloses ends.
type closeMode int

const (
	byClientClose closeMode = iota // client close frame, server answers
	byServerClose                  // protocol error: server sends 1007
	byReset                        // TCP reset (SO_LINGER 0), no close frame
	byFIN                          // TCP FIN, no close frame
	byResetPaused                  // reset while reading is paused
	closeModes
)

// runMixedClose opens one connection, uses it, and ends it by mode.
func runMixedClose(ts *testServer, i int, mode closeMode) error {
	path := "/ws/echo"
	if i%2 == 1 {
		path = fmt.Sprintf("/ws/topics/t%d", i%7)
	}
	if mode == byResetPaused {
		path = "/ws/echo"
	}
	c, resp, err := wstest.DialRaw(ts.wsURL(path))
	if err != nil {
		return err
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("upgrade: %s", resp.Status)
	}
	if err := c.WriteFrame(wstest.OpBinary, seqPayload(i, 256)); err != nil {
		return err
	}
	switch mode {
	case byClientClose:
		if err := c.WriteClose(CloseNormal, "bye"); err != nil {
			return err
		}
		return drainToEOF(c)
	case byServerClose:
		if err := c.WriteFrame(wstest.OpText, []byte{0xff}); err != nil {
			return err
		}
		return drainToEOF(c)
	case byReset:
		abortConn(c.Conn)
	case byFIN:
		return c.Close()
	case byResetPaused:
		// With a 4 KiB send buffer (smallSendBuffer), 512 KiB of echoes
		// pause the reader; wait for the pause, then reset.
		payload := make([]byte, 16<<10)
		for range 32 {
			if err := c.WriteFrame(wstest.OpBinary, payload); err != nil {
				return err
			}
		}
		deadline := time.Now().Add(20 * time.Second)
		for ts.Load().Paused == 0 {
			if time.Now().After(deadline) {
				return errors.New("never paused")
			}
			time.Sleep(time.Millisecond)
		}
		abortConn(c.Conn)
	}
	return nil
}

// drainToEOF reads until the server closes the connection.
func drainToEOF(c *wstest.Conn) error {
	for {
		if _, err := c.ReadFrame(10 * time.Second); err != nil {
			if isEOF(err) {
				return nil
			}
			return err
		}
	}
}

// TestCleanupAfterMixedCloses: after 1000 connections on both endpoints
// ended every way a connection ends (client close frame, server close,
// TCP reset with no close frame, FIN with no close frame, reset while
// paused with bytes buffered), /debug/stats over HTTP is back to zero:
// no session, pause, buffered byte, topic, subscription, per-IP entry or
// handshake left, and descriptors and goroutines back to the baseline.
func TestCleanupAfterMixedCloses(t *testing.T) {
	ts := runServerWith(t, nil, smallSendBuffer)
	base := fetchStats(t, ts)

	const total, workers = 1000, 32
	var counts [closeModes]int
	modes := make([]closeMode, total)
	for i := range modes {
		modes[i] = closeMode(i % int(byResetPaused))
		if i%100 == 99 { // 10 paused resets: each buffers ~256 KiB
			modes[i] = byResetPaused
		}
		counts[modes[i]]++
	}
	// Paused resets run one at a time: they wait for ts.Load().Paused.
	var pausedMu sync.Mutex
	jobs := make(chan int)
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if modes[i] == byResetPaused {
					pausedMu.Lock()
				}
				if err := runMixedClose(ts, i, modes[i]); err != nil {
					errs <- fmt.Errorf("connection %d (mode %d): %w", i, modes[i], err)
				}
				if modes[i] == byResetPaused {
					// Wait for the reset to be processed before the next.
					for ts.Load().Paused != 0 {
						time.Sleep(time.Millisecond)
					}
					pausedMu.Unlock()
				}
			}
		}()
	}
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	var st Stats
	wstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		st = fetchStats(t, ts)
		if st.Connections != 0 || st.EchoConnections != 0 || st.TopicConnections != 0 || st.Paused != 0 ||
			st.BufferedBytes != 0 || st.Topics != 0 || st.Subscribers != 0 || st.IPEntries != 0 || st.Handshakes != 0 {
			return fmt.Errorf("not back to zero: %+v", st)
		}
		if st.OpenFDs > base.OpenFDs+2 {
			return fmt.Errorf("open_fds %d, baseline %d", st.OpenFDs, base.OpenFDs)
		}
		if st.Goroutines > base.Goroutines+2 {
			return fmt.Errorf("goroutines %d, baseline %d", st.Goroutines, base.Goroutines)
		}
		return nil
	})
	t.Logf("baseline %d fds %d goroutines; after %d connections: %d fds %d goroutines",
		base.OpenFDs, base.Goroutines, total, st.OpenFDs, st.Goroutines)

	// Every session reported exactly one close, classified by who ended it.
	snap := ts.obs.snapshot()
	if len(snap.closes) != total {
		t.Fatalf("%d closes observed, want %d", len(snap.closes), total)
	}
	var client, server, abnormal int
	for _, c := range snap.closes {
		switch {
		case c.Initiator == InitiatorClient && c.Code == CloseNormal:
			client++
		case c.Initiator == InitiatorServer && c.Code == CloseInvalidPayload:
			server++
		case c.Initiator == InitiatorAbnormal && c.Code == closeAbnormal:
			abnormal++
		default:
			t.Errorf("unexpected close %+v", c)
		}
	}
	if client != counts[byClientClose] || server != counts[byServerClose] ||
		abnormal != counts[byReset]+counts[byFIN]+counts[byResetPaused] {
		t.Fatalf("closes: client %d server %d abnormal %d; want %d %d %d", client, server, abnormal,
			counts[byClientClose], counts[byServerClose], counts[byReset]+counts[byFIN]+counts[byResetPaused])
	}
	if p := snap.events[BackpressurePause]; p < counts[byResetPaused] {
		t.Fatalf("%d pauses, want at least %d", p, counts[byResetPaused])
	}
}

// TestShutdown: cancelling Serve turns /readyz to 503, stops accepting,
// sends 1001 to every connection behind the echoes already accepted (so a
// client mid-echo loses nothing that was read), force-closes after
// drain_timeout a client whose socket is stuck, and returns nil.
func TestShutdown(t *testing.T) {
	ts := runServerWith(t, func(c *Config) {
		// Long enough for ten clients to answer the 1001 on a loaded
		// machine; the stuck one holds the drain this long regardless.
		c.Shutdown.DrainTimeout = 4 * time.Second
		c.Backpressure.WriteTimeout = time.Minute // only the drain timeout can end the stuck one
	}, smallSendBuffer)

	type client struct {
		conn *gws.Conn
		h    *wstest.Client
		sent atomic.Int64
	}
	var clients []*client
	for i := range 10 {
		path := "/ws/echo"
		if i >= 7 {
			path = "/ws/topics/news"
		}
		conn, h := wstest.DialGWS(t, ts.wsURL(path), true)
		clients = append(clients, &client{conn: conn, h: h})
	}
	// Three echo clients are mid-echo: they write until the server closes.
	var wg sync.WaitGroup
	for _, c := range clients[:3] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100000 { // bounded; ends at the server's close
				if c.conn.WriteMessage(gws.OpcodeBinary, seqPayload(i, 128)) != nil {
					return
				}
				c.sent.Add(1)
			}
		}()
	}
	// A client that floods and never reads: its writes are stuck.
	stuck := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"), wstest.WithReadBuffer(4096))
	flood(stuck)
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		ss := sessionOfClient(ts, stuck.Conn)
		if ss == nil || !ss.buf.isPaused() {
			return errors.New("the stuck client is not paused yet")
		}
		if st := ts.Stats(); st.Connections != 11 || clients[0].h.Count() < 10 {
			return fmt.Errorf("not ready: %+v, first client echoed %d", st, clients[0].h.Count())
		}
		return nil
	})

	waitStopped := stopInBackground(t, ts)
	// The stuck client holds the drain open until drain_timeout.
	wstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if code := getStatus(t, ts.adminURL("/readyz")); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz %d while draining", code)
		}
		if !fetchStats(t, ts).Draining {
			return errors.New("stats do not say draining")
		}
		return nil
	})
	if code := getStatus(t, ts.adminURL("/healthz")); code != http.StatusOK {
		t.Fatalf("/healthz %d while draining, want 200", code)
	}
	for i, c := range clients {
		select {
		case <-c.h.Closed():
		case <-time.After(20 * time.Second):
			t.Fatalf("client %d not closed", i)
		}
		if c.h.CloseCode() != CloseGoingAway {
			t.Fatalf("client %d got close code %d (%v), want 1001", i, c.h.CloseCode(), c.h.Err())
		}
	}
	wg.Wait()
	// Mid-echo clients got a gap-free prefix of what they sent.
	for i, c := range clients[:3] {
		msgs := c.h.Messages()
		for j, m := range msgs {
			if seq := binary.BigEndian.Uint64(m); seq != uint64(j) {
				t.Fatalf("client %d: echo %d has seq %d", i, j, seq)
			}
		}
		got := len(msgs)
		if int64(got) > c.sent.Load() {
			t.Fatalf("client %d: %d echoes for %d sent", i, got, c.sent.Load())
		}
	}
	waitStopped() // after drain_timeout
	if err := expectClose(ts, closeAbnormal, reasonForcedShutdown, InitiatorAbnormal); err != nil {
		t.Fatal(err)
	}
	goingAway := 0
	written := map[int64]int{} // echoes written per 1001 session
	for _, c := range ts.obs.snapshot().closes {
		if c.Code == CloseGoingAway && c.Initiator == InitiatorServer && c.Reason == reasonShutdown {
			goingAway++
			written[c.MessagesOut]++
			if c.MessagesOut > c.MessagesIn {
				t.Fatalf("session wrote %d echoes for %d read", c.MessagesOut, c.MessagesIn)
			}
		}
	}
	if goingAway != len(clients) {
		t.Fatalf("%d sessions closed with 1001, want %d", goingAway, len(clients))
	}
	// Each mid-echo client received every echo its session wrote before
	// the 1001 (the server does not count a write that failed).
	for i, c := range clients[:3] {
		n := int64(c.h.Count())
		if written[n] == 0 {
			t.Fatalf("client %d received %d echoes; sessions wrote %v", i, n, written)
		}
		written[n]--
	}
	// Stopped accepting.
	if c, resp, err := wstest.DialRaw(ts.wsURL("/ws/echo")); err == nil {
		c.Close()
		t.Fatalf("upgrade after shutdown answered %s, want connection refused", resp.Status)
	}
	if st := ts.Stats(); st.Connections != 0 || st.Paused != 0 || st.BufferedBytes != 0 || st.IPEntries != 0 {
		t.Fatalf("after shutdown: %+v", st)
	}
}

// TestShutdownIdle: with no connections, Serve returns nil promptly and
// a slow-loris connection does not hold the shutdown past
// handshake_timeout.
func TestShutdownIdle(t *testing.T) {
	ts := runServer(t, func(c *Config) { c.Limits.HandshakeTimeout = 500 * time.Millisecond })
	c, err := net.DialTimeout("tcp", ts.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitStats(t, ts, "1 handshake", func(st Stats) bool { return st.Handshakes == 1 })
	stopInBackground(t, ts)()
	if st := ts.Stats(); st.Handshakes != 0 {
		t.Fatalf("handshakes %d after shutdown", st.Handshakes)
	}
}

// TestShutdownWaitsForCloseHandshake: after 1001 the server waits for
// each client's close frame; one that answers ends at once, one that
// never answers holds the drain until drain_timeout and is then
// force-closed. Serve returns nil either way.
func TestShutdownWaitsForCloseHandshake(t *testing.T) {
	// The polite client's answer must be processed, and the stats read,
	// within drain_timeout: 3 s leaves a loaded machine room.
	ts := runServer(t, func(c *Config) { c.Shutdown.DrainTimeout = 3 * time.Second })
	polite := wstest.MustDialRaw(t, ts.wsURL("/ws/echo"))
	silent := wstest.MustDialRaw(t, ts.wsURL("/ws/topics/x"))
	waitStats(t, ts, "2 connections", func(st Stats) bool { return st.Connections == 2 })
	waitStopped := stopInBackground(t, ts)

	for _, c := range []*wstest.Conn{polite, silent} {
		code, err := c.ReadUntilClose(10 * time.Second)
		if err != nil || code != CloseGoingAway {
			t.Fatalf("got close %d (%v), want 1001", code, err)
		}
	}
	if err := polite.WriteClose(CloseGoingAway, ""); err != nil {
		t.Fatal(err)
	}
	// The polite session ends with the handshake, the silent one stays.
	wstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := len(ts.obs.snapshot().closes); n != 1 {
			return fmt.Errorf("%d sessions closed, want the polite one", n)
		}
		return nil
	})
	if st := ts.Stats(); st.Connections != 1 || st.TopicConnections != 1 {
		t.Fatalf("during the drain: %+v, want the silent topic session only", st)
	}
	waitStopped()
	waitLog(t, ts, slog.LevelWarn, "drain timeout: force-closing remaining connections", map[string]string{"connections": "1"})
	// Both clients saw the server's FIN after its close frame.
	for _, c := range []*wstest.Conn{polite, silent} {
		if _, err := c.ReadFrame(10 * time.Second); !isEOF(err) {
			t.Fatalf("after 1001: %v, want EOF", err)
		}
	}
	snap := ts.obs.snapshot()
	if len(snap.closes) != 2 {
		t.Fatalf("closes %+v, want 2", snap.closes)
	}
	for _, c := range snap.closes {
		if c.Code != CloseGoingAway || c.Initiator != InitiatorServer {
			t.Fatalf("close %+v, want 1001 by the server", c)
		}
	}
}
