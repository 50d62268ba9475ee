package telemetry

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsd-dev/wsd/service"
)

// Span and event names (the README's span table).
const (
	spanSession        = "ws.session"
	spanRejected       = "ws.upgrade.rejected"
	spanMessageReceive = "ws.message.receive"
	spanMessageSend    = "ws.message.send"

	eventWarn             = "backpressure.warn"
	eventPause            = "backpressure.pause"
	eventResume           = "backpressure.resume"
	eventSlowConsumer     = "slow_consumer"
	eventHeartbeatTimeout = "heartbeat.timeout"
	eventCloseReceived    = "close.received"
)

// bg is the context of metric measurements on the data path: no span in
// it, so the SDK never builds an exemplar per message.
var bg = context.Background()

// SessionOpened implements service.Observer: it counts the connection
// and starts its ws.session span (kind server), continuing the trace
// context of the upgrade request. The returned context carries the span,
// so the session's log lines get its trace_id and span_id.
func (t *Telemetry) SessionOpened(ctx context.Context, info service.SessionInfo) (context.Context, service.SessionObserver) {
	ep := t.inst.endpoint(info.Endpoint)
	t.inst.opened.Add(bg, 1, ep.add...)
	if info.Request != nil {
		ctx = t.prop.Extract(ctx, propagation.HeaderCarrier(info.Request.Header))
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, keyEndpoint.String(string(info.Endpoint)))
	if info.Topic != "" {
		attrs = append(attrs, keyTopic.String(info.Topic))
	}
	if info.Remote.IsValid() {
		attrs = append(attrs, keyPeerAddress.String(info.Remote.Addr().Unmap().String()), keyPeerPort.Int(int(info.Remote.Port())))
	}
	if t.recordUser && info.User != "" {
		attrs = append(attrs, keyEndUserID.String(info.User))
	}
	ctx, span := t.tracer.Start(ctx, spanSession, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	s := &session{t: t, ep: ep, counts: t.inst.counters(info.Endpoint), endpoint: info.Endpoint, span: span, ctx: ctx}
	s.msgSpans = t.msgRatio > 0 && span.IsRecording()
	return ctx, s
}

// rejectStatus is the HTTP status wsd answers each reject reason with
// (service.RejectReason documents them).
func rejectStatus(r service.RejectReason) int {
	switch r {
	case service.RejectPerIP, service.RejectRate, service.RejectPerUser:
		return http.StatusTooManyRequests
	case service.RejectOrigin, service.RejectForbidden:
		return http.StatusForbidden
	case service.RejectUnauthorized:
		return http.StatusUnauthorized
	case service.RejectBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusServiceUnavailable
}

// UpgradeRejected implements service.Observer: it counts the refusal by
// reason and records a short ws.upgrade.rejected span (kind server,
// continuing the request's trace context). As for HTTP server spans, a
// 5xx refusal (the server's own limits) has error status, a 4xx one
// (the client's fault) does not.
func (t *Telemetry) UpgradeRejected(ctx context.Context, r *http.Request, reason service.RejectReason) {
	t.inst.rejected.Add(bg, 1, t.inst.rejectOptions(reason)...)
	status := rejectStatus(reason)
	attrs := []attribute.KeyValue{keyRejectReason.String(string(reason)), keyHTTPStatus.Int(status)}
	if r != nil {
		ctx = t.prop.Extract(ctx, propagation.HeaderCarrier(r.Header))
		attrs = append(attrs, keyHTTPMethod.String(r.Method), keyURLPath.String(r.URL.Path))
		if host, port, ok := splitHostPort(r.RemoteAddr); ok {
			attrs = append(attrs, keyPeerAddress.String(host), keyPeerPort.Int(port))
		}
	}
	_, span := t.tracer.Start(ctx, spanRejected, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	if status >= 500 {
		span.SetStatus(codes.Error, "upgrade rejected: "+string(reason))
	}
	span.End()
}

// AuthFailed implements service.Observer: it counts the failure by
// reason (wsd.auth.failures). The refused upgrade's own span comes from
// UpgradeRejected.
func (t *Telemetry) AuthFailed(_ context.Context, reason service.AuthFailure) {
	t.inst.authFailed(reason)
}

// AcceptError implements service.Observer: it counts a failed accept by
// errno (emfile, enfile, other).
func (t *Telemetry) AcceptError(errno string) {
	t.inst.acceptErrors.Add(bg, 1, t.inst.acceptOptions(errno)...)
}

func splitHostPort(addr string) (string, int, bool) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			port, err := strconv.Atoi(addr[i+1:])
			if err != nil {
				return "", 0, false
			}
			host := addr[:i]
			if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
				host = host[1 : len(host)-1]
			}
			return host, port, true
		}
	}
	return "", 0, false
}

// session is the SessionObserver of one connection. Its per-message
// methods only add to atomic counters and record histograms with
// precomputed attribute sets (and, when message spans are on, start a
// sampled child span).
type session struct {
	t        *Telemetry
	ep       *endpointOpts
	counts   *messageCounters
	endpoint service.Endpoint
	span     trace.Span
	ctx      context.Context
	msgSpans bool
	queued   atomic.Uint32 // messages queued: picks the depth sample
}

// MessageReceived implements service.SessionObserver.
func (s *session) MessageReceived(n int) {
	// The size distribution is sampled, one message in sizeSampleEvery
	// per endpoint (the endpoint's count picks it: no extra atomic): a
	// histogram Record was ~3 % of wsd's CPU per echoed message.
	if s.counts.msgsIn.Add(1)%sizeSampleEvery == 0 {
		s.t.inst.messageSize.Record(bg, int64(n), s.ep.rec...)
	}
	s.counts.bytesIn.Add(int64(n))
	if s.msgSpans {
		s.messageSpan(spanMessageReceive, n, -1)
	}
}

// MessageQueued implements service.SessionObserver: it records the send
// buffer's depth, one message in depthSampleEvery per connection. It
// runs on the queueing goroutine, never on gws's writer goroutine: that
// one is often freshly started, and the SDK's Record path grew its stack
// (a copy costing about a microsecond, ~5 % of an echo's CPU).
func (s *session) MessageQueued(_ int, buffered int64) {
	if s.queued.Add(1)%depthSampleEvery == 0 {
		s.t.inst.bufferDepth.Record(bg, buffered, s.ep.rec...)
	}
}

// MessageSent implements service.SessionObserver.
func (s *session) MessageSent(n int, buffered int64) {
	s.counts.msgsOut.Add(1)
	s.counts.bytesOut.Add(int64(n))
	if s.msgSpans {
		s.messageSpan(spanMessageSend, n, buffered)
	}
}

// messageSpan records one message as a short child span of the session,
// for a Config.MessageSpans fraction of messages. A receive and its echo are
// separate calls with nothing to pair them, so each span covers the
// observer call, not the message's whole life.
func (s *session) messageSpan(name string, n int, buffered int64) {
	if rand.Float64() >= s.t.msgRatio {
		return
	}
	attrs := []attribute.KeyValue{keyEndpoint.String(string(s.endpoint)), keyMessageSize.Int(n)}
	if buffered >= 0 {
		attrs = append(attrs, keyBuffered.Int64(buffered))
	}
	_, span := s.t.tracer.Start(s.ctx, name, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	span.End()
}

// Backpressure implements service.SessionObserver.
func (s *session) Backpressure(ev service.BackpressureEvent, buffered int64) {
	s.t.inst.transitions.Add(bg, 1, s.t.inst.backpressure(ev)...)
	name := eventWarn
	switch ev {
	case service.BackpressurePause:
		name = eventPause
	case service.BackpressureResume:
		name = eventResume
	}
	s.span.AddEvent(name, trace.WithAttributes(keyBuffered.Int64(buffered)))
}

// Dropped implements service.SessionObserver.
func (s *session) Dropped(n int) {
	s.t.inst.dropped.Add(bg, int64(n), s.t.inst.dropOpts...)
}

// SlowConsumer implements service.SessionObserver.
func (s *session) SlowConsumer(buffered int64) {
	s.t.inst.evicted.Add(bg, 1, s.ep.add...)
	s.span.AddEvent(eventSlowConsumer, trace.WithAttributes(keyBuffered.Int64(buffered)))
}

// HeartbeatTimeout implements service.SessionObserver.
func (s *session) HeartbeatTimeout() {
	s.t.inst.hbTimeouts.Add(bg, 1, s.ep.add...)
	s.span.AddEvent(eventHeartbeatTimeout)
}

// CloseReceived implements service.SessionObserver.
func (s *session) CloseReceived(code uint16, valid bool) {
	s.span.AddEvent(eventCloseReceived, trace.WithAttributes(keyCloseCode.Int(int(code)), keyCloseValid.Bool(valid)))
}

// Closed implements service.SessionObserver: it counts the close by
// code label and initiator, records the duration, and ends the span with
// the close attributes and status (see spanStatus).
func (s *session) Closed(info service.CloseInfo) {
	// The reason is the client's raw bytes. OTLP strings must be UTF-8:
	// one invalid attribute makes the protobuf exporter reject the whole
	// batch, losing every span in it (found by the compose demo's abuse
	// clients; e2e TestTracesLandInJaeger checks it).
	info.Reason = strings.ToValidUTF8(info.Reason, "\uFFFD")
	in := s.t.inst
	label := info.CodeLabel
	if label == "" {
		label = service.CloseCodeLabel(info.Code)
	}
	in.closed.Add(bg, 1, in.closeOptions(s.endpoint, label, info.Initiator)...)
	if opts, ok := s.ep.durationInitiator[info.Initiator]; ok {
		in.sessionDuration.Record(bg, info.Duration.Seconds(), opts...)
	}
	s.span.SetAttributes(
		keyCloseCode.Int(int(info.Code)),
		keyCloseReason.String(info.Reason),
		keyInitiator.String(string(info.Initiator)),
		keyMessagesIn.Int64(info.MessagesIn),
		keyMessagesOut.Int64(info.MessagesOut),
		keyBytesIn.Int64(info.BytesIn),
		keyBytesOut.Int64(info.BytesOut),
		keyDropped.Int64(info.Dropped),
	)
	if code, desc := spanStatus(info); code == codes.Error {
		if info.Err != nil {
			s.span.RecordError(info.Err)
		}
		s.span.SetStatus(code, desc)
	}
	s.span.End()
}

// spanStatus decides the ws.session span's status. Error when the
// session did not end by a clean close handshake that either side chose
// in the normal course of things:
//   - abnormal: the connection was lost without a close frame (reset,
//     EOF, write timeout, forced shutdown);
//   - server-initiated with any code but 1000/1001: a protection or a
//     failure ended it (1002 protocol error, 1007, 1009, 1011, 1013 slow
//     consumer or paused too long, 4000 heartbeat timeout);
//   - client-initiated with a close frame that breaks RFC 6455 §7.4.
//
// A client's own valid code (even 1011 or an application code) and
// graceful shutdown (1001) leave the status unset.
func spanStatus(info service.CloseInfo) (codes.Code, string) {
	desc := "close " + strconv.Itoa(int(info.Code))
	if info.Reason != "" {
		desc += ": " + info.Reason
	}
	switch info.Initiator {
	case service.InitiatorAbnormal:
		return codes.Error, desc
	case service.InitiatorServer:
		// An expired token (4001) is the session's planned end, like
		// a shutdown: the client reconnects with a fresh one.
		if info.Code != service.CloseNormal && info.Code != service.CloseGoingAway && info.Code != service.CloseTokenExpired {
			return codes.Error, desc
		}
	case service.InitiatorClient:
		if info.Err != nil {
			return codes.Error, "invalid close frame: " + desc
		}
	}
	return codes.Unset, ""
}
