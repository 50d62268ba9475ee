package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lxzan/gws"
	"golang.org/x/time/rate"
)

// session is one upgraded connection. Its read loop is gws's ReadLoop
// (one goroutine), its writes go through gws's per-connection queue (one
// goroutine while non-empty), and every write is counted in buf.
type session struct {
	srv      *Server
	id       uint64
	endpoint Endpoint
	topic    string
	remote   netip.AddrPort
	conn     *gws.Conn
	nc       net.Conn        // the socket; Close releases it
	gc       *gwsConn        // what gws holds: nc with a lingering Close
	ctx      context.Context // carries the observer's span for logs
	obs      SessionObserver
	buf      *sendBuffer
	limiter  *rate.Limiter // nil: no shaping
	opened   time.Time
	unsub    func()
	// user is the token's sub ("" with auth.mode none); expires is
	// exp + leeway in Server.now units (0: never); canPublish says
	// whether the token may publish to topic.
	user       string
	expires    int64
	canPublish bool

	guard       *frameGuard
	lastSeen    atomic.Int64 // coarse clock (Server.now) of the last frame in
	lastPing    atomic.Int64
	msgStarted  atomic.Int64 // coarse clock when the message being received started; 0: none
	pingPending atomic.Bool  // a ping is queued: don't queue another
	pongs       pongQueue
	peerClose   *guardEnd // the peer's close frame, set by the read loop before finish
	finished    atomic.Bool
	registered  bool // set by Server.register, on the upgrade goroutine

	msgsIn, bytesIn, msgsOut, bytesOut, dropped atomic.Int64

	// Server-initiated close: the first of closeWith/abort wins.
	endOnce   sync.Once
	dying     chan struct{} // closed when the server starts closing us
	endCode   uint16
	endReason string
	endErr    error
	goAwayOne sync.Once
}

// sessionSlot is the gws SessionStorage of a connection: it holds only
// the *session, written once before the read loop starts, so reading it
// per message needs no lock (gws's default storage takes a mutex).
type sessionSlot struct{ s *session }

func (*sessionSlot) Len() int                               { return 1 }
func (c *sessionSlot) Load(string) (any, bool)              { return c.s, c.s != nil }
func (*sessionSlot) Delete(string)                          {}
func (c *sessionSlot) Store(_ string, v any)                { c.s, _ = v.(*session) }
func (c *sessionSlot) Range(f func(key string, v any) bool) { f("session", c.s) }

func sessionOf(c *gws.Conn) *session { return c.Session().(*sessionSlot).s }

// handler implements gws.Event for every connection of a Server.
type handler struct{ srv *Server }

func (h handler) OnOpen(*gws.Conn) {}

func (h handler) OnPing(c *gws.Conn, payload []byte) {
	s := sessionOf(c)
	s.touch()
	s.pongs.ping(s, payload)
}

func (h handler) OnPong(c *gws.Conn, _ []byte) { sessionOf(c).touch() }

func (h handler) OnMessage(c *gws.Conn, m *gws.Message) {
	s := sessionOf(c)
	defer func() {
		if v := recover(); v != nil {
			s.srv.counters.panics.Add(1)
			s.srv.log.LogAttrs(s.ctx, slog.LevelError, "panic while handling a message; closing with 1011",
				slog.Uint64("conn_id", s.id), slog.Any("panic", v))
			s.closeWith(CloseInternalError, reasonInternalError, fmt.Errorf("panic: %v", v), closeLinger)
		}
	}()
	if s.isDying() {
		// Data after wsd's close frame (read while lingering for the
		// peer's close frame) is discarded: never echoed or published.
		_ = m.Close()
		return
	}
	s.touch()
	n := m.Data.Len()
	s.msgsIn.Add(1)
	s.bytesIn.Add(int64(n))
	s.obs.MessageReceived(n)
	if hook := s.srv.testHook; hook != nil {
		hook(s, m)
	}
	switch s.endpoint {
	case EndpointEcho:
		s.echo(m) // takes ownership of m
	case EndpointTopic:
		if !s.canPublish {
			_ = m.Close()
			s.publishForbidden()
			return
		}
		payload := append([]byte(nil), m.Bytes()...)
		op := m.Opcode
		_ = m.Close()
		if p := s.srv.ctxPublish; p != nil {
			p(s.ctx, s.topic, s, op, payload)
		} else {
			s.srv.publish(s.topic, s, op, payload)
		}
	}
	s.waitWhilePaused()
	s.shape()
}

func (h handler) OnClose(c *gws.Conn, err error) { sessionOf(c).finish(err) }

// touch records inbound activity for the heartbeat.
func (s *session) touch() { s.lastSeen.Store(s.srv.now()) }

// queueControl queues a control frame write (ping or pong) under the
// write watchdog (backpressure.go).
func (s *session) queueControl(write func() error) {
	s.buf.addControl()
	s.conn.Async(func() {
		defer s.recoverWrite()
		s.buf.doneControl(write() == nil)
	})
}

// errWriteStalled is the error of a connection closed by the watchdog.
var errWriteStalled = errors.New("no write completed for backpressure.write_timeout: peer not reading")

// setCloseDeadline bounds the wait for the close frame's write (behind a
// write stuck on a peer that stopped reading).
func (s *session) setCloseDeadline() {
	_ = s.nc.SetWriteDeadline(time.Now().Add(min(time.Second, s.srv.cfg.Backpressure.WriteTimeout)))
}

// echo queues m back to the client, under the write watchdog.
func (s *session) echo(m *gws.Message) {
	n := int64(m.Data.Len())
	t, total := s.buf.add(n)
	s.obs.MessageQueued(int(n), total)
	s.report(t, total)
	s.conn.Async(func() {
		defer s.recoverWrite()
		err := s.conn.WriteMessage(m.Opcode, m.Bytes())
		_ = m.Close()
		s.written(n, err)
	})
}

// Deliver implements Subscriber: it queues a fan-out message without ever
// blocking the publisher. The frame is encoded once per publish
// (gws.Broadcaster); a job after it counts completion.
func (s *session) Deliver(m *Outbound) {
	if s.isDying() {
		return // closing: a write could only fail
	}
	n := int64(len(m.Payload))
	verdict, t, total := s.buf.offerFanout(n)
	switch verdict {
	case offerDrop:
		s.dropped.Add(1)
		s.srv.counters.dropped.Add(1)
		s.obs.Dropped(1)
		return
	case offerEvict:
		s.evictSlow(total)
		return
	}
	s.obs.MessageQueued(int(n), total)
	s.report(t, total)
	if err := m.b.Broadcast(s.conn); err != nil {
		s.written(n, err)
		return
	}
	s.conn.Async(func() {
		defer s.recoverWrite()
		// gws reports a failed broadcast write only by closing the
		// connection, and skips writes to a closed one.
		var err error
		if s.gc.broken.Load() {
			err = errNotSent
		}
		s.written(n, err)
	})
}

// errNotSent marks a fan-out message whose write failed or was skipped.
var errNotSent = errors.New("connection closed before the message was written")

// written accounts for a finished write. A failed write closes the
// connection inside gws; a timeout (the close frame's deadline) is
// remembered as the close reason.
func (s *session) written(n int64, err error) {
	t, before := s.buf.done(n)
	if err == nil {
		s.msgsOut.Add(1)
		s.bytesOut.Add(n)
		s.obs.MessageSent(int(n), before)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		s.abort(reasonWriteTimeout, err)
	}
	s.report(t, before-n)
}

// report logs and observes backpressure transitions.
func (s *session) report(t transition, buffered int64) {
	if t == 0 {
		return
	}
	for _, e := range [...]struct {
		bit   transition
		ev    BackpressureEvent
		level slog.Level
		msg   string
	}{
		{transWarn, BackpressureWarn, slog.LevelWarn, "send buffer above warn level"},
		{transPause, BackpressurePause, slog.LevelWarn, "send buffer critical: reading paused"},
		{transResume, BackpressureResume, slog.LevelInfo, "send buffer drained: reading resumed"},
	} {
		if t&e.bit != 0 {
			s.srv.log.LogAttrs(s.ctx, e.level, e.msg, slog.Uint64("conn_id", s.id), slog.Int64("buffered_bytes", buffered))
			s.obs.Backpressure(e.ev, buffered)
		}
	}
}

// waitWhilePaused blocks the read loop while the send buffer is above
// pause_bytes, so TCP flow control throttles the client. It returns when
// the buffer drains below resume_bytes, when the session is closing, or
// after max_paused (then the session is closed with 1013).
func (s *session) waitWhilePaused() {
	resume, since := s.buf.pauseState()
	if resume == nil {
		return
	}
	wait := s.srv.cfg.Backpressure.MaxPaused - time.Since(since)
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	select {
	case <-resume:
		s.touch() // the pause was not idleness
		s.notReading()
	case <-s.dying:
	case <-t.C:
		s.closeWith(CloseTryAgainLater, reasonPausedTooLong, nil, 0)
	}
}

// shape delays the next read when the client sends faster than
// limits.message_rate (token bucket). Shaping never closes.
func (s *session) shape() {
	if s.limiter == nil {
		return
	}
	// Allow is the per-message fast path: no allocation and one clock
	// read, where Reserve allocates a Reservation and Delay reads the
	// clock again. Only a client over its rate takes the slow path.
	now := time.Now()
	if s.limiter.AllowN(now, 1) {
		return
	}
	d := s.limiter.ReserveN(now, 1).DelayFrom(now)
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		s.touch()
		s.notReading()
	case <-s.dying:
	}
}

// notReading restarts the frame_timeout clock of a message in progress
// after the read loop waited on wsd's side (pause, shaping): the peer
// cannot finish a message we are not reading.
func (s *session) notReading() {
	if s.msgStarted.Load() != 0 {
		s.msgStarted.Store(s.srv.now())
	}
}

// evictSlow closes a slow consumer with 1013 without blocking the
// publisher (the close frame waits for the socket's write lock).
func (s *session) evictSlow(buffered int64) {
	first := false
	s.endOnce.Do(func() {
		first = true
		s.endCode, s.endReason = CloseTryAgainLater, reasonSlowConsumer
		close(s.dying)
	})
	if !first {
		return
	}
	s.srv.counters.evicted.Add(1)
	s.obs.SlowConsumer(buffered)
	s.srv.log.LogAttrs(s.ctx, slog.LevelWarn, "slow consumer evicted",
		slog.Uint64("conn_id", s.id), slog.Int64("buffered_bytes", buffered))
	go s.writeClose(CloseTryAgainLater, reasonSlowConsumer, 0)
}

// closeWith sends a close frame with code and closes the connection
// (see writeClose for linger). Only the first server-side close of a
// session takes effect.
func (s *session) closeWith(code uint16, reason string, err error, linger time.Duration) {
	first := false
	s.endOnce.Do(func() {
		first = true
		s.endCode, s.endReason, s.endErr = code, reason, err
		close(s.dying)
	})
	if first {
		s.writeClose(code, reason, linger)
	}
}

// writeClose sends the close frame. The deadline bounds the wait for a
// writer stuck on a peer that stopped reading. With linger > 0, a close
// frame that went out is followed by a wait (up to linger) for the
// peer's close frame, so that a peer still sending gets the frame, not a
// reset (see gwsConn); with 0, or if the frame could not be written, the
// socket is closed at once: for peers that are silent or not reading,
// waiting would only hold the descriptor.
func (s *session) writeClose(code uint16, reason string, linger time.Duration) {
	s.setCloseDeadline()
	s.gc.linger.Store(int64(linger))
	if err := s.conn.WriteClose(code, []byte(truncateReason(reason))); err != nil || linger <= 0 {
		_ = s.nc.Close()
	}
}

// abort closes the socket without a close frame (the peer cannot receive
// one: write timeout, forced shutdown).
func (s *session) abort(reason string, err error) {
	s.endOnce.Do(func() {
		s.endCode, s.endReason, s.endErr = closeAbnormal, reason, err
		close(s.dying)
	})
	_ = s.nc.Close()
}

// goAway queues 1001 behind the writes already accepted, so a graceful
// shutdown loses no echo that was read before it.
func (s *session) goAway() {
	s.goAwayOne.Do(func() {
		// The drain bounds the wait for the client's close frame:
		// sessions still open at drain_timeout are force-closed. The
		// linger deadline is only a backstop behind it.
		linger := s.srv.cfg.Shutdown.DrainTimeout + closeLinger
		s.conn.Async(func() { s.closeWith(CloseGoingAway, reasonShutdown, nil, linger) })
	})
}

// publishForbidden closes a session whose token may not publish to its
// topic: the message is dropped, never fanned out.
func (s *session) publishForbidden() {
	s.srv.obs.AuthFailed(s.ctx, AuthPublishForbidden)
	s.srv.log.LogAttrs(s.ctx, slog.LevelInfo, "publish forbidden", slog.Uint64("conn_id", s.id), slog.String("sub", s.user))
	s.closeWith(ClosePolicyViolation, reasonPubForbidden, nil, closeLinger)
}

// tokenExpired closes a session whose token has expired, from the
// housekeeping sweep.
func (s *session) tokenExpired() {
	s.srv.log.LogAttrs(s.ctx, slog.LevelInfo, "token expired", slog.Uint64("conn_id", s.id), slog.String("sub", s.user))
	go s.closeWith(CloseTokenExpired, reasonTokenExpired, nil, closeLinger)
}

// heartbeatTimeout closes a silent peer: best-effort 4000, then the
// socket, so its descriptor is released even if the frame cannot go out.
func (s *session) heartbeatTimeout() {
	s.srv.counters.heartbeatTimeouts.Add(1)
	s.obs.HeartbeatTimeout()
	s.srv.log.LogAttrs(s.ctx, slog.LevelInfo, "heartbeat timeout", slog.Uint64("conn_id", s.id))
	go s.closeWith(CloseHeartbeatTimeout, reasonHeartbeat, nil, 0)
}

// finish runs once, when gws's read loop ends: it classifies the close,
// releases every resource and logs one line.
func (s *session) finish(err error) {
	if !s.finished.CompareAndSwap(false, true) {
		return // the read loop's panic net and gws's OnClose both end here
	}
	// Done last: Serve must not return (and the process exit) before the
	// observer's Closed and the close log line of every session.
	defer s.srv.wg.Done()
	info := CloseInfo{Duration: time.Since(s.opened), Err: err}
	s.endOnce.Do(func() { close(s.dying) }) // wakes a paused reader; no-op if closing
	switch pc := s.peerClose; {
	case s.endCode != 0 && s.endCode != closeAbnormal:
		info.Code, info.Reason, info.Initiator, info.Err = s.endCode, s.endReason, InitiatorServer, s.endErr
	case s.endCode == closeAbnormal:
		info.Code, info.Reason, info.Initiator, info.Err = closeAbnormal, s.endReason, InitiatorAbnormal, s.endErr
	case pc != nil:
		s.obs.CloseReceived(pc.peerCode, pc.valid)
		info.Code, info.Reason, info.Initiator, info.Err = pc.peerCode, string(pc.peerText), InitiatorClient, nil
		if !pc.valid {
			info.Err = errInvalidCloseFrame
		}
	default:
		info.Code, info.Initiator, info.Reason = classifyReadError(err)
	}
	info.Reason = truncateReason(info.Reason)
	info.CodeLabel = CloseCodeLabel(info.Code)
	info.MessagesIn, info.BytesIn = s.msgsIn.Load(), s.bytesIn.Load()
	info.MessagesOut, info.BytesOut = s.msgsOut.Load(), s.bytesOut.Load()
	info.Dropped = s.dropped.Load()

	_ = s.nc.Close() // gws closes it on every path; this makes it explicit
	s.guard.release()
	s.buf.close()
	s.srv.unregister(s)
	s.obs.Closed(info)

	level := slog.LevelInfo
	if errors.Is(info.Err, errInvalidCloseFrame) {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.Uint64("conn_id", s.id), slog.String("remote", s.remote.String()),
		slog.String("endpoint", string(s.endpoint)), slog.Int("code", int(info.Code)),
		slog.String("reason", info.Reason), slog.String("initiator", string(info.Initiator)),
		slog.Duration("duration", info.Duration),
		slog.Int64("msgs_in", info.MessagesIn), slog.Int64("bytes_in", info.BytesIn),
		slog.Int64("msgs_out", info.MessagesOut), slog.Int64("bytes_out", info.BytesOut),
	}
	if s.topic != "" {
		attrs = append(attrs, slog.String("topic", s.topic))
	}
	if info.Dropped > 0 {
		attrs = append(attrs, slog.Int64("dropped", info.Dropped))
	}
	if info.Err != nil {
		attrs = append(attrs, slog.String("error", info.Err.Error()))
	}
	s.srv.log.LogAttrs(s.ctx, level, "connection closed", attrs...)
}

var errInvalidCloseFrame = errors.New("invalid close frame (RFC 6455 §7.4): answered 1002")

// classifyReadError maps the error that ended gws's read loop, when
// neither side sent a close frame wsd initiated, to a code and initiator.
// gws has already answered protocol errors with a close frame: its
// status-code errors (1002, 1009) and invalid UTF-8 (1007).
func classifyReadError(err error) (uint16, Initiator, string) {
	var sc interface{ Uint16() uint16 }
	switch {
	case errors.As(err, &sc):
		return sc.Uint16(), InitiatorServer, err.Error()
	case errors.Is(err, gws.ErrTextEncoding):
		return CloseInvalidPayload, InitiatorServer, err.Error()
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return closeAbnormal, InitiatorAbnormal, "connection lost"
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			// wsd sets no read deadline on an upgraded connection, so a
			// timeout is a write stuck for write_timeout. gws reports a
			// failed queued write (fan-out) this way, and a failed echo
			// write can end the read loop before written() records it.
			return closeAbnormal, InitiatorAbnormal, reasonWriteTimeout
		}
		return closeAbnormal, InitiatorAbnormal, "connection lost"
	}
	// Any other read error is a framing violation gws answered with 1002.
	return CloseProtocolError, InitiatorServer, err.Error()
}
