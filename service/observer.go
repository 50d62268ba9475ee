package service

import (
	"context"
	"net/http"
	"net/netip"
	"time"
)

// Endpoint names a public endpoint. The set is fixed, so it is safe as a
// metric attribute. The zero value names no endpoint and is never
// reported.
type Endpoint string

// The public endpoints.
const (
	EndpointEcho  Endpoint = "echo"
	EndpointTopic Endpoint = "topic"
)

// RejectReason says why an upgrade was refused before the WebSocket
// handshake. The set is fixed, so it is safe as a metric attribute. The
// zero value is not a reason and is never reported.
type RejectReason string

// The reasons an upgrade is refused, each answered with its HTTP status.
const (
	RejectMaxConnections RejectReason = "max_connections" // 503 + Retry-After
	RejectPerIP          RejectReason = "per_ip"          // 429
	RejectRate           RejectReason = "rate"            // 429 + Retry-After
	RejectFDPressure     RejectReason = "fd_pressure"     // 503 + Retry-After
	RejectOrigin         RejectReason = "origin"          // 403
	RejectDraining       RejectReason = "draining"        // 503 + Retry-After
	RejectBadRequest     RejectReason = "bad_request"     // 400
	RejectUnauthorized   RejectReason = "unauthorized"    // 401 + WWW-Authenticate
	RejectForbidden      RejectReason = "forbidden"       // 403: no right to subscribe
	RejectPerUser        RejectReason = "per_user"        // 429
)

// Initiator says which side ended a session. The zero value is not an
// initiator and is never reported.
type Initiator string

// The sides that end a session.
const (
	// InitiatorClient: the client sent a close frame.
	InitiatorClient Initiator = "client"
	// InitiatorServer: wsd sent a close frame first (shutdown, eviction,
	// protocol error, heartbeat timeout, ...).
	InitiatorServer Initiator = "server"
	// InitiatorAbnormal: the TCP connection ended with no close frame
	// (reset, EOF, write timeout).
	InitiatorAbnormal Initiator = "abnormal"
)

// BackpressureEvent is a transition of a connection's send buffer. The
// zero value is not a transition and is never reported.
type BackpressureEvent string

// The backpressure transitions.
const (
	BackpressureWarn   BackpressureEvent = "warn"
	BackpressurePause  BackpressureEvent = "pause"
	BackpressureResume BackpressureEvent = "resume"
)

// SessionInfo describes a session when it opens. The Server fills every
// field but Topic (empty for echo) and User (empty with auth.mode none);
// a zero value describes no session.
type SessionInfo struct {
	// ID is unique within the process.
	ID uint64
	// Endpoint is the endpoint the session was upgraded on.
	Endpoint Endpoint
	// Topic is the topic of a topic session, empty for echo. It is a
	// client-chosen value: fine on a span, never on a metric.
	Topic string
	// Remote is the peer's address.
	Remote netip.AddrPort
	// User is the token's sub with auth.mode jwt, else empty. It can be
	// personal data: an Observer records it only when told to.
	User string
	// Request is the upgrade request (headers carry W3C traceparent).
	Request *http.Request
}

// CloseInfo describes how a session ended. The Server fills it once per
// session; a zero value describes no session.
type CloseInfo struct {
	// Code is the close code sent by the initiator: the client's code when
	// the client closed (0 when its close frame had no payload), the code
	// wsd sent when the server closed, 1006 when the connection ended
	// without a close frame.
	Code uint16
	// CodeLabel is CloseCodeLabel(Code): a bounded set for metrics.
	CodeLabel string
	// Reason is the close reason, truncated to 123 bytes.
	Reason string
	// Initiator is who ended the session.
	Initiator Initiator
	// Duration is the time from upgrade to close.
	Duration time.Duration
	// Counters of data messages and payload bytes.
	MessagesIn, MessagesOut, BytesIn, BytesOut int64
	// Dropped counts messages discarded by the drop slow-consumer policy.
	Dropped int64
	// Err is the transport error behind an abnormal or server close, if any.
	Err error
}

// Observer receives what the service and its protections do. The
// telemetry package implements it; without WithObserver (or with a nil
// Observer) events go nowhere. Methods are called on the data path and
// must not block.
type Observer interface {
	// SessionOpened is called once per upgraded connection, from the
	// upgrade request's context. The returned context is used for every
	// log line of the session (so a tracing observer can put its span in
	// it); the returned SessionObserver receives the session's events.
	SessionOpened(ctx context.Context, info SessionInfo) (context.Context, SessionObserver)
	// UpgradeRejected is called for every refused upgrade.
	UpgradeRejected(ctx context.Context, r *http.Request, reason RejectReason)
	// AuthFailed is called for every refused token or missing right:
	// before UpgradeRejected for a refused upgrade, before the 1008
	// close for a publish without the right.
	AuthFailed(ctx context.Context, reason AuthFailure)
	// AcceptError is called when accept fails; errno is "emfile",
	// "enfile" or "other".
	AcceptError(errno string)
}

// SessionObserver receives the events of one session. Its methods are
// called from the session's goroutines (reader and writer), possibly
// concurrently, and must be cheap: they run once per message.
type SessionObserver interface {
	// MessageReceived: a data message of n payload bytes was read.
	MessageReceived(n int)
	// MessageQueued: a data message of n payload bytes was accepted for
	// sending; buffered is the connection's send buffer including it.
	// It is called on the goroutine that queued the message (the read
	// loop for echo, the publisher's for fan-out), a long-lived one, not
	// on gws's short-lived writer goroutine.
	MessageQueued(n int, buffered int64)
	// MessageSent: a data message of n payload bytes was written to the
	// socket; buffered is the connection's send buffer before the write
	// completed (the bytes that were waiting, this message included).
	MessageSent(n int, buffered int64)
	// Backpressure: the send buffer crossed a threshold.
	Backpressure(ev BackpressureEvent, buffered int64)
	// Dropped: n messages were discarded for this slow subscriber
	// (slow_consumer: drop).
	Dropped(n int)
	// SlowConsumer: the session is evicted as a slow consumer (close
	// policy) with buffered bytes pending.
	SlowConsumer(buffered int64)
	// HeartbeatTimeout: nothing arrived for ping_interval + pong_timeout.
	HeartbeatTimeout()
	// CloseReceived: the client sent a close frame with code (0 for an
	// empty payload); valid says whether it passes RFC 6455 §7.4.
	CloseReceived(code uint16, valid bool)
	// Closed is the last call; the session's resources are released.
	Closed(info CloseInfo)
}

// nopObserver is used when no Observer (or a nil one) is given.
type nopObserver struct{}

func (nopObserver) SessionOpened(ctx context.Context, _ SessionInfo) (context.Context, SessionObserver) {
	return ctx, nopSession{}
}
func (nopObserver) UpgradeRejected(context.Context, *http.Request, RejectReason) {}
func (nopObserver) AcceptError(string)                                           {}
func (nopObserver) AuthFailed(context.Context, AuthFailure)                      {}

type nopSession struct{}

func (nopSession) MessageReceived(int)                   {}
func (nopSession) MessageQueued(int, int64)              {}
func (nopSession) MessageSent(int, int64)                {}
func (nopSession) Backpressure(BackpressureEvent, int64) {}
func (nopSession) Dropped(int)                           {}
func (nopSession) SlowConsumer(int64)                    {}
func (nopSession) HeartbeatTimeout()                     {}
func (nopSession) CloseReceived(uint16, bool)            {}
func (nopSession) Closed(CloseInfo)                      {}
