package service

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Close codes wsd sends (RFC 6455 §7.4.1 and the IANA registry). The
// README's close-code table lists when each is sent and what a client
// should do.
const (
	// CloseNormal answers a client's valid close frame.
	CloseNormal uint16 = 1000
	// CloseGoingAway is sent to every connection on graceful shutdown.
	CloseGoingAway uint16 = 1001
	// CloseProtocolError is sent for an invalid close frame (reserved or
	// out-of-range code, 1-byte payload) or another framing violation.
	CloseProtocolError uint16 = 1002
	// CloseInvalidPayload is sent for a text message that is not UTF-8,
	// as soon as the bytes that make it invalid arrive.
	CloseInvalidPayload uint16 = 1007
	// ClosePolicyViolation is sent to a peer that did not finish a
	// message within limits.frame_timeout, and with auth.mode jwt to one
	// that sent a message on a topic its token may not publish to.
	ClosePolicyViolation uint16 = 1008
	// CloseMessageTooBig is sent for a message over limits.max_message_bytes.
	CloseMessageTooBig uint16 = 1009
	// CloseInternalError is sent when handling a message panicked.
	CloseInternalError uint16 = 1011
	// CloseTryAgainLater is sent to a slow consumer and to a connection
	// paused longer than backpressure.max_paused.
	CloseTryAgainLater uint16 = 1013
	// CloseHeartbeatTimeout (private-use range) is sent, best effort,
	// when nothing arrived for ping_interval + pong_timeout.
	CloseHeartbeatTimeout uint16 = 4000
	// CloseTokenExpired (private-use range) is sent when the session's
	// token passes exp plus auth.jwt.leeway: the client reconnects with
	// a fresh token.
	CloseTokenExpired uint16 = 4001

	// closeNoStatus and closeAbnormal are reserved: never sent on the
	// wire, used in CloseInfo and logs for "empty close frame" and "no
	// close frame at all".
	closeNoStatus uint16 = 1005
	closeAbnormal uint16 = 1006
)

// Close reasons wsd sends with its codes (also the "reason" log field).
const (
	reasonShutdown       = "server shutting down"
	reasonSlowConsumer   = "slow consumer"
	reasonPausedTooLong  = "paused too long"
	reasonInternalError  = "internal error"
	reasonHeartbeat      = "heartbeat timeout"
	reasonWriteTimeout   = "write timeout"
	reasonForcedShutdown = "shutdown drain timeout"
	reasonTokenExpired   = "token expired"
	reasonPubForbidden   = "publish forbidden"
)

// maxCloseReason is the longest reason that fits a close frame: control
// payloads are at most 125 bytes, two of which hold the code.
const maxCloseReason = 123

// ValidCloseCode reports whether a peer may send code in a close frame
// (RFC 6455 §7.4): 1000–1003, 1007–1014 and 3000–4999. Codes below 1000,
// 1004–1006, 1015, 1016–2999 and 5000 and above are invalid; 1005, 1006
// and 1015 are reserved for local use and must never be on the wire.
func ValidCloseCode(code uint16) bool {
	switch {
	case code < 1000, code >= 5000:
		return false
	case code >= 1004 && code <= 1006, code == 1015:
		return false
	case code >= 1016 && code < 3000:
		return false
	}
	return true
}

// CloseCodeLabel maps a close code to a bounded set of strings for metric
// attributes: the codes wsd knows by number, "private" for other valid
// application codes (3000–4999), and "invalid" for anything a client sent
// outside RFC 6455. Code 0 (close frame without payload) maps to "1005".
func CloseCodeLabel(code uint16) string {
	switch code {
	case 0, closeNoStatus:
		return "1005"
	case 1000:
		return "1000"
	case 1001:
		return "1001"
	case 1002:
		return "1002"
	case 1003:
		return "1003"
	case closeAbnormal:
		return "1006"
	case 1007:
		return "1007"
	case 1008:
		return "1008"
	case 1009:
		return "1009"
	case 1010:
		return "1010"
	case 1011:
		return "1011"
	case 1012:
		return "1012"
	case 1013:
		return "1013"
	case 1014:
		return "1014"
	case CloseHeartbeatTimeout:
		return "4000"
	case CloseTokenExpired:
		return "4001"
	}
	if ValidCloseCode(code) {
		return "private"
	}
	return "invalid"
}

// truncateReason cuts a close reason to what fits a close frame, without
// splitting a UTF-8 sequence.
func truncateReason(s string) string {
	if len(s) <= maxCloseReason {
		return s
	}
	s = s[:maxCloseReason]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// closeLinger bounds how long a session that sent its close frame waits
// for the peer's close frame before its socket is closed (at shutdown,
// drain_timeout bounds it instead).
const closeLinger = 2 * time.Second

// gwsConn is the net.Conn gws writes to and closes. It fills two gaps in
// gws (v1.8):
//
//   - One close frame per connection. wsd answers the peer's close frame
//     itself (control.go: gws's WriteClose cannot send an empty close
//     frame or echo a code) and then calls WriteClose only to mark gws
//     closed; several close paths may race. The first close frame is
//     written, every later frame is dropped: nothing follows a close
//     frame on the wire (RFC 6455 §5.5.1). gws writes each frame with
//     one Write call, so a Write that starts with a close frame's first
//     byte (FIN, opcode 8, unmasked from a server) is a close frame.
//   - gws closes the socket as soon as it has written a close frame.
//     Closing a socket with unread input makes the kernel send a reset,
//     and a reset makes the peer's kernel discard what it has not read
//     yet, the close frame included: a client that was sending when wsd
//     closed (mid-echo at shutdown) would see ECONNRESET, not 1001. When
//     the session sets linger, Close only shuts the write side (FIN after
//     the close frame) and bounds the read side by linger: gws's
//     read loop keeps reading (the session discards data) until the
//     peer's close frame, EOF or the deadline, and the session's finish
//     closes the socket for real.
//
// It also records when the connection broke (a write failed or gws
// closed it): gws reports the outcome of a queued broadcast write only by
// closing the connection, so the session checks broken to count a
// fan-out message as sent or not.
type gwsConn struct {
	net.Conn
	linger    atomic.Int64 // time.Duration; 0: Close closes at once
	broken    atomic.Bool
	closeSent atomic.Bool
}

// errAfterClose is the error of a write after the close frame.
var errAfterClose = errors.New("write after the close frame")

func (c *gwsConn) Write(p []byte) (int, error) {
	if c.closeSent.Load() {
		if len(p) > 0 && p[0] == 0x88 {
			return len(p), nil // a second close frame: already closed
		}
		c.broken.Store(true)
		return 0, errAfterClose
	}
	if len(p) > 0 && p[0] == 0x88 {
		c.closeSent.Store(true)
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.broken.Store(true)
	}
	return n, err
}

func (c *gwsConn) Close() error {
	c.broken.Store(true)
	if d := time.Duration(c.linger.Load()); d > 0 {
		inner := c.Conn
		if tc, ok := inner.(*trackedConn); ok {
			inner = tc.Conn
		}
		if cw, ok := inner.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return c.Conn.SetReadDeadline(time.Now().Add(d))
		}
	}
	return c.Conn.Close()
}
