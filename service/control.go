package service

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/lxzan/gws"
)

// Control frames from the peer: pings are answered through a bounded
// pong queue, and the session ends through its write queue when the
// frame guard (frameguard.go) stops the stream, for a violation or the
// peer's close frame, so the close frame goes out after every write
// already queued.

// maxQueuedPongs bounds the pongs queued for one connection. Below it
// every ping gets its own pong (RFC 6455 §5.5.2); above it (a peer that
// floods pings and does not read) pings are coalesced: the newest
// payload is kept and sent when the queued pongs have gone, as §5.5.3
// allows, so a ping flood cannot grow the queue.
const maxQueuedPongs = 16

// pongQueue is a session's pending pongs. The zero value is empty.
type pongQueue struct {
	mu        sync.Mutex
	queued    int    // pong writes queued, not yet run
	latest    []byte // the newest ping's payload not given its own pong
	hasLatest bool
}

// ping answers a ping with payload (gws allocates it per ping, so it is
// kept without a copy).
func (q *pongQueue) ping(s *session, payload []byte) {
	q.mu.Lock()
	if q.queued >= maxQueuedPongs {
		q.latest, q.hasLatest = payload, true
		q.mu.Unlock()
		return
	}
	q.queued++
	// This ping is newer than the one kept, and gets its own pong: the
	// kept one would come after it, an older payload after a newer.
	q.latest, q.hasLatest = nil, false
	q.mu.Unlock()
	s.queueControl(func() error {
		err := s.conn.WritePong(payload)
		q.mu.Lock()
		q.queued--
		last, p := q.queued == 0 && q.hasLatest, q.latest
		if last {
			q.latest, q.hasLatest = nil, false
		}
		q.mu.Unlock()
		if last && err == nil {
			// The last queued pong is followed by the newest ping's, so
			// the peer's most recent ping is always answered.
			err = s.conn.WritePong(p)
		}
		return err
	})
}

// errProtocolViolation is the session error of a connection the frame
// guard closed for a violation.
var errProtocolViolation = errors.New("protocol violation")

// endByGuard ends the session for the reason the frame guard stopped the
// stream, once gws has dispatched every message before it. It runs on
// the read loop and returns the error that ends it.
func (s *session) endByGuard(e *guardEnd, src io.Reader) error {
	done := make(chan struct{})
	if e.peerClose {
		s.peerClose = e
		if s.isDying() {
			return errGuardStopped // our close frame went first: this is its answer
		}
		s.conn.Async(func() {
			defer close(done)
			s.replyClose(e)
		})
		<-done
		drain(src)
		return errGuardStopped
	}
	s.srv.log.LogAttrs(s.ctx, slog.LevelInfo, "protocol violation", slog.Uint64("conn_id", s.id),
		slog.Int("code", int(e.code)), slog.String("reason", e.reason))
	s.conn.Async(func() {
		defer close(done)
		s.closeWith(e.code, e.reason, fmt.Errorf("%w: %s", errProtocolViolation, e.reason), closeLinger)
		// Marks gws closed if another close path won closeWith but has
		// not written yet, so that gws never sends a close of its own.
		_ = s.conn.WriteClose(e.code, []byte(e.reason))
	})
	// Waiting for the queued close is bounded: a write stuck on a peer
	// that does not read is ended by the write watchdog.
	<-done
	drain(src)
	return errGuardStopped
}

// drain reads and discards what the peer still sends after wsd's close
// frame, until its close (EOF) or the linger deadline, so that closing
// the socket does not reset the connection before the peer has read the
// close frame.
func drain(src io.Reader) {
	var buf [512]byte
	for {
		if _, err := src.Read(buf[:]); err != nil {
			return
		}
	}
}

// replyClose answers the peer's close frame (RFC 6455 §5.5.1): an empty
// close frame with an empty one, a valid application code (3000–4999)
// with the same code, another valid code (1000–1014) with 1000, and an
// invalid close frame with 1002. The write side is closed right after;
// the read side lingers (closeLinger) until the peer closes, so bytes it
// sent after its close frame do not turn the close into a reset.
func (s *session) replyClose(e *guardEnd) {
	var payload []byte
	switch {
	case !e.valid:
		payload = []byte{byte(CloseProtocolError >> 8), byte(CloseProtocolError & 0xff)}
	case e.peerCode >= 3000:
		payload = []byte{byte(e.peerCode >> 8), byte(e.peerCode)}
	case e.peerCode != 0:
		payload = []byte{byte(CloseNormal >> 8), byte(CloseNormal & 0xff)}
	}
	s.setCloseDeadline()
	s.gc.linger.Store(int64(closeLinger))
	// gws's WriteClose always sends a code, so the reply is written as a
	// close message; WriteClose then marks gws closed and closes the
	// socket, its own frame dropped by gwsConn (one close frame per
	// connection).
	_ = s.conn.WriteMessage(gws.OpcodeCloseConnection, payload)
	_ = s.conn.WriteClose(CloseNormal, nil)
}

// frameTimeout closes a peer that started a message and did not finish
// it within limits.frame_timeout, so that its partial message stops
// holding memory: 1008, then the socket once the peer closes or after
// closeLinger (the read loop reads away what the peer still sends, so
// the close frame is not lost to a reset).
func (s *session) frameTimeout() {
	s.srv.counters.frameTimeouts.Add(1)
	s.srv.log.LogAttrs(s.ctx, slog.LevelInfo, "frame timeout: message not completed in time", slog.Uint64("conn_id", s.id))
	go s.closeWith(ClosePolicyViolation, reasonFrameTimeout, nil, closeLinger)
}
