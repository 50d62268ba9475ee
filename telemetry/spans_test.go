package telemetry

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

// attrs returns a span's attributes by key.
func attrs(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

// waitSpan waits for exactly one ended span named name and returns it.
func (f *fixture) waitSpan(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var got []sdktrace.ReadOnlySpan
	wstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		got = f.endedSpans(name)
		if len(got) != 1 {
			return fmt.Errorf("%d ended %s spans, want 1", len(got), name)
		}
		return nil
	})
	return got[0]
}

// publishUntil sends 8 KiB messages from pub until cond holds, at most
// max messages; the short pause lets the server deliver each one before
// the next, so thresholds are not overshot by much.
func publishUntil(t *testing.T, pub *wstest.Conn, max int, what string, cond func() bool) {
	t.Helper()
	payload := make([]byte, 8<<10)
	for i := 0; !cond(); i++ {
		if i == max {
			t.Fatalf("%s: not reached after %d messages", what, max)
		}
		if err := pub.WriteFrame(wstest.OpBinary, payload); err != nil {
			t.Fatalf("%s: publish: %v", what, err)
		}
		time.Sleep(250 * time.Microsecond)
	}
}

// TestSlowConsumerSession drives one topic subscriber through warn,
// pause, resume and a slow-consumer eviction over real sockets, then
// checks its ws.session span (events, attributes, error status) and the
// metrics the same protections produced.
func TestSlowConsumerSession(t *testing.T) {
	// Long heartbeat: the raw clients never answer pings. A short write
	// timeout bounds how long the evicted subscriber's close frame waits
	// behind writes to its full socket.
	f := start(t, fixtureOpts{svc: func(c *service.Config) {
		c.Heartbeat.PingInterval = time.Minute
		c.Backpressure.WriteTimeout = 2 * time.Second
	}})
	sub, pub := f.slowSubscriber(t, "prices")

	// 1. The subscriber does not read: its buffer passes warn and pause.
	publishUntil(t, pub, 10000, "pause", func() bool { return f.srv.Load().Paused == 1 })
	rm := f.collect(t)
	if v, _ := intValue(rm, "wsd.connections.paused"); v != 1 {
		t.Errorf("wsd.connections.paused = %d while paused, want 1", v)
	}
	if v, _ := intValue(rm, "wsd.send_buffer.usage"); v < 256<<10 {
		t.Errorf("wsd.send_buffer.usage = %d while paused, want >= pause_bytes", v)
	}
	if v, _ := intValue(rm, "wsd.connections.active", keyEndpoint.String("topic")); v != 2 {
		t.Errorf("wsd.connections.active{topic} = %d, want 2", v)
	}

	// 2. It reads until the buffer drains below resume_bytes.
	deadline := time.Now().Add(20 * time.Second)
	for f.srv.Load().Paused != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not resumed: %+v", f.srv.Load())
		}
		if _, err := sub.ReadFrame(5 * time.Second); err != nil {
			t.Fatalf("subscriber read: %v", err)
		}
	}

	// 3. It stops reading again and is evicted above max_bytes. Publishing
	// stops at the eviction: the close frame then waits at most
	// write_timeout behind the writes already queued to the full socket.
	publishUntil(t, pub, 10000, "eviction", func() bool {
		v, _ := intValue(f.collect(t), "wsd.slow_consumers.evicted")
		return v >= 1
	})
	span := f.waitSpan(t, spanSession) // the publisher's session is still open

	if span.SpanKind() != trace.SpanKindServer {
		t.Errorf("kind %v, want server", span.SpanKind())
	}
	a := attrs(span.Attributes())
	subPort := sub.LocalAddr().(*net.TCPAddr).Port
	for k, want := range map[attribute.Key]attribute.Value{
		keyEndpoint:    attribute.StringValue("topic"),
		keyTopic:       attribute.StringValue("prices"),
		keyPeerAddress: attribute.StringValue("127.0.0.1"),
		keyPeerPort:    attribute.IntValue(subPort),
		keyCloseCode:   attribute.IntValue(1013),
		keyCloseReason: attribute.StringValue("slow consumer"),
		keyInitiator:   attribute.StringValue("server"),
		keyMessagesIn:  attribute.Int64Value(0),
		keyBytesIn:     attribute.Int64Value(0),
		keyDropped:     attribute.Int64Value(0),
	} {
		if got := a[k]; got != want {
			t.Errorf("attribute %s = %v, want %v", k, got.String(), want.String())
		}
	}
	if out := a[keyMessagesOut].AsInt64(); out <= 0 || a[keyBytesOut].AsInt64() != out*(8<<10) {
		t.Errorf("ws.messages.out %d, ws.bytes.out %d: want > 0 messages of 8 KiB", out, a[keyBytesOut].AsInt64())
	}
	if st := span.Status(); st.Code != codes.Error || !strings.Contains(st.Description, "1013") {
		t.Errorf("status %+v, want error mentioning 1013", st)
	}

	// Events: warn and pause, then resume, then slow_consumer, each with
	// the buffered bytes at that moment.
	first := map[string]int{}
	buffered := map[string]int64{}
	for i, ev := range span.Events() {
		if _, seen := first[ev.Name]; !seen {
			first[ev.Name] = i
			buffered[ev.Name] = attrs(ev.Attributes)[keyBuffered].AsInt64()
		}
	}
	for _, name := range []string{eventWarn, eventPause, eventResume, eventSlowConsumer} {
		if _, ok := first[name]; !ok {
			t.Fatalf("no %s event among %v", name, span.Events())
		}
	}
	if !(first[eventWarn] <= first[eventPause] && first[eventPause] < first[eventResume] && first[eventResume] < first[eventSlowConsumer]) {
		t.Errorf("event order %v, want warn ≤ pause < resume < slow_consumer", first)
	}
	if buffered[eventPause] < 256<<10 || buffered[eventResume] >= 128<<10 || buffered[eventSlowConsumer] < (512-8)<<10 {
		t.Errorf("buffered bytes at events %v: want pause ≥ 256 KiB, resume < 128 KiB, slow_consumer ≥ 504 KiB", buffered)
	}

	rm = f.collect(t)
	for _, c := range []struct {
		name string
		want int64
		min  bool
		kv   []attribute.KeyValue
	}{
		{"wsd.backpressure.transitions", 1, true, []attribute.KeyValue{keyBPEvent.String("warn")}},
		{"wsd.backpressure.transitions", 1, true, []attribute.KeyValue{keyBPEvent.String("pause")}},
		{"wsd.backpressure.transitions", 1, true, []attribute.KeyValue{keyBPEvent.String("resume")}},
		{"wsd.slow_consumers.evicted", 1, false, []attribute.KeyValue{keyEndpoint.String("topic")}},
		{"wsd.connections.closed", 1, false, []attribute.KeyValue{keyEndpoint.String("topic"), keyCloseCode.String("1013"), keyInitiator.String("server")}},
		{"wsd.connections.paused", 0, false, nil},
		{"wsd.connections.active", 1, false, []attribute.KeyValue{keyEndpoint.String("topic")}},
		{"wsd.messages.received", 1, true, []attribute.KeyValue{keyEndpoint.String("topic")}},
	} {
		got, ok := intValue(rm, c.name, c.kv...)
		if !ok || (c.min && got < c.want) || (!c.min && got != c.want) {
			t.Errorf("%s%v = %d (present %v), want %s%d", c.name, c.kv, got, ok, map[bool]string{true: ">= "}[c.min], c.want)
		}
	}
	if n, sum := histCount[int64](rm, "wsd.send_buffer.depth", keyEndpoint.String("topic")); n == 0 || sum < int64(n)*(8<<10) {
		t.Errorf("wsd.send_buffer.depth: %d recordings summing %d, want > 0, each ≥ one message", n, sum)
	}
	if n, _ := histCount[float64](rm, "wsd.session.duration", keyEndpoint.String("topic"), keyInitiator.String("server")); n != 1 {
		t.Errorf("wsd.session.duration{topic,server}: %d recordings, want 1", n)
	}
}

// TestTraceparentContinued: a W3C traceparent on the upgrade request
// becomes the parent of the session span; a clean client close leaves
// the status unset and records close.received; every session log line
// carries the span's trace_id and span_id.
func TestTraceparentContinued(t *testing.T) {
	f := start(t, fixtureOpts{})
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	tp := http.Header{"Traceparent": {"00-" + traceID + "-" + parentID + "-01"}}
	if err := echoSession(f.wsURL("/ws/echo"), tp, []byte("hello"), 3, nil); err != nil {
		t.Fatal(err)
	}
	span := f.waitSpan(t, spanSession)
	if got := span.SpanContext().TraceID().String(); got != traceID {
		t.Errorf("trace id %s, want %s", got, traceID)
	}
	if got := span.Parent().SpanID().String(); got != parentID || !span.Parent().IsRemote() {
		t.Errorf("parent %s (remote %v), want remote %s", got, span.Parent().IsRemote(), parentID)
	}
	a := attrs(span.Attributes())
	if a[keyCloseCode].AsInt64() != 1000 || a[keyInitiator].AsString() != "client" || a[keyCloseReason].AsString() != "bye" ||
		a[keyMessagesIn].AsInt64() != 3 || a[keyMessagesOut].AsInt64() != 3 || a[keyBytesIn].AsInt64() != 15 || a[keyBytesOut].AsInt64() != 15 {
		t.Errorf("attributes %v", span.Attributes())
	}
	if _, ok := a[keyTopic]; ok {
		t.Errorf("echo session has a ws.topic attribute")
	}
	if st := span.Status(); st.Code != codes.Unset {
		t.Errorf("status %+v, want unset for a clean client close", st)
	}
	evs := span.Events()
	if len(evs) != 1 || evs[0].Name != eventCloseReceived ||
		attrs(evs[0].Attributes)[keyCloseCode].AsInt64() != 1000 || !attrs(evs[0].Attributes)[keyCloseValid].AsBool() {
		t.Errorf("events %+v, want one close.received{1000, valid}", evs)
	}

	// Log lines of the session carry its IDs.
	f.waitIdle(t)
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(f.logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if _, ok := rec["conn_id"]; !ok {
			continue
		}
		lines++
		if rec["trace_id"] != traceID || rec["span_id"] != span.SpanContext().SpanID().String() {
			t.Errorf("session log line without the session's trace_id/span_id: %s", line)
		}
	}
	if lines < 2 {
		t.Errorf("%d session log lines, want opened and closed at least:\n%s", lines, f.logs.String())
	}
}

// TestRejectedUpgradeSpans: a refused upgrade produces a short server
// span with the reason, continuing the request's trace; 5xx refusals
// have error status, 4xx ones do not.
func TestRejectedUpgradeSpans(t *testing.T) {
	f := start(t, fixtureOpts{svc: func(c *service.Config) {
		c.Limits.AllowedOrigins = []string{"https://ok.example"}
		c.Limits.MaxConnections = 1
	}})
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	tp := http.Header{"Traceparent": {"00-" + traceID + "-b7ad6b7169203331-01"}, "Origin": {"https://evil.example"}}
	if status := upgradeStatus(t, f.wsURL("/ws/echo"), tp); status != http.StatusForbidden {
		t.Fatalf("status %d, want 403", status)
	}
	c := wstest.MustDialRaw(t, f.wsURL("/ws/echo"))
	if status := upgradeStatus(t, f.wsURL("/ws/echo"), nil); status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", status)
	}
	if _, err := c.CloseHandshake(1000, "bye"); err != nil {
		t.Fatal(err)
	}
	var spans []sdktrace.ReadOnlySpan
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if spans = f.endedSpans(spanRejected); len(spans) != 2 {
			return fmt.Errorf("%d rejected spans", len(spans))
		}
		return nil
	})
	byReason := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byReason[attrs(s.Attributes())[keyRejectReason].AsString()] = s
	}
	origin, full := byReason["origin"], byReason["max_connections"]
	if origin == nil || full == nil {
		t.Fatalf("reasons %v, want origin and max_connections", byReason)
	}
	if origin.SpanContext().TraceID().String() != traceID || origin.SpanKind() != trace.SpanKindServer {
		t.Errorf("origin span: trace %s kind %v, want continued trace, server", origin.SpanContext().TraceID(), origin.SpanKind())
	}
	if a := attrs(origin.Attributes()); a[keyHTTPStatus].AsInt64() != 403 || a[keyURLPath].AsString() != "/ws/echo" || origin.Status().Code != codes.Unset {
		t.Errorf("origin span: %v status %+v", origin.Attributes(), origin.Status())
	}
	if a := attrs(full.Attributes()); a[keyHTTPStatus].AsInt64() != 503 || full.Status().Code != codes.Error {
		t.Errorf("max_connections span: %v status %+v, want 503 and error", full.Attributes(), full.Status())
	}
	rm := f.collect(t)
	for _, reason := range []string{"origin", "max_connections"} {
		if v, _ := intValue(rm, "wsd.upgrades.rejected", keyRejectReason.String(reason)); v != 1 {
			t.Errorf("wsd.upgrades.rejected{%s} = %d, want 1", reason, v)
		}
	}
}

// TestMessageSpans: with message_spans 1 every message gets
// a child span of its session; off (the default) none does.
func TestMessageSpans(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("message_spans=", on), func(t *testing.T) {
			f := start(t, fixtureOpts{tel: func(c *Config) {
				if on {
					c.MessageSpans = 1
				}
			}})
			if err := echoSession(f.wsURL("/ws/echo"), nil, []byte("ping"), 4, nil); err != nil {
				t.Fatal(err)
			}
			session := f.waitSpan(t, spanSession)
			want := 0
			if on {
				want = 4
			}
			for _, name := range []string{spanMessageReceive, spanMessageSend} {
				got := f.endedSpans(name)
				if len(got) != want {
					t.Fatalf("%d %s spans, want %d", len(got), name, want)
				}
				for _, s := range got {
					if s.Parent().SpanID() != session.SpanContext().SpanID() || attrs(s.Attributes())[keyMessageSize].AsInt64() != 4 {
						t.Errorf("%s span: parent %s size %v, want child of %s with size 4", name, s.Parent().SpanID(),
							attrs(s.Attributes())[keyMessageSize].String(), session.SpanContext().SpanID())
					}
				}
			}
		})
	}
}
