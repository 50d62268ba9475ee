//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/wsd-dev/wsd/chaos"
	"github.com/wsd-dev/wsd/chaos/images"
	"github.com/wsd-dev/wsd/chaos/jaeger"
	"github.com/wsd-dev/wsd/chaos/wsdcontainer"
)

// Thresholds of the wsd under test: small, so that a few MiB through
// Docker's port proxy are enough to cross them.
const (
	jtPauseBytes  = 64 << 10
	jtResumeBytes = 32 << 10
	jtMaxBytes    = 256 << 10
	jtMessage     = 32 << 10 // payload of every flood message
)

// TestTracesLandInJaeger runs wsd exactly as docker-compose.yml does
// (image from the Dockerfile, configuration through WSD_ variables, OTLP
// over HTTP to a Jaeger v2 on the same network), drives five sessions
// that trip the protections, and checks through Jaeger's query API that
// each left a ws.session span with the right close attributes and
// events. Every client sends a W3C traceparent, so each session's span
// is found by its own trace id, which also proves that wsd continues the
// client's trace.
func TestTracesLandInJaeger(t *testing.T) {
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	// The Jaeger build is slow only the first time on a machine (see
	// jaeger.ImageTag); wsd's image is rebuilt when its binary changes.
	jImg, err := jaeger.Image(ctx)
	if err != nil {
		t.Fatalf("jaeger image: %v", err)
	}
	wImg, err := images.Wsd(ctx)
	if err != nil {
		t.Fatalf("wsd image: %v", err)
	}

	nw := newNetwork(ctx, t)
	j, err := jaeger.Run(ctx, jImg, network.WithNetwork([]string{"jaeger"}, nw))
	testcontainers.CleanupContainer(t, j)
	if err != nil {
		t.Fatalf("jaeger: %v", err)
	}
	w, err := wsdcontainer.Run(ctx, wImg,
		network.WithNetwork([]string{"wsd"}, nw),
		wsdcontainer.WithConfig("backpressure.warn_bytes", fmt.Sprint(jtResumeBytes)),
		wsdcontainer.WithConfig("backpressure.pause_bytes", fmt.Sprint(jtPauseBytes)),
		wsdcontainer.WithConfig("backpressure.resume_bytes", fmt.Sprint(jtResumeBytes)),
		wsdcontainer.WithConfig("backpressure.max_bytes", fmt.Sprint(jtMaxBytes)),
		wsdcontainer.WithConfig("backpressure.slow_consumer", "close"),
		// Generous: the clients below decide when a pause ends, and a
		// stalled frame must not end the session before they do.
		wsdcontainer.WithConfig("backpressure.max_paused", "2m"),
		wsdcontainer.WithConfig("backpressure.write_timeout", "2m"),
		wsdcontainer.WithConfig("heartbeat.ping_interval", "2s"),
		wsdcontainer.WithConfig("heartbeat.pong_timeout", "2s"),
		testcontainers.WithEnv(map[string]string{
			"OTEL_SERVICE_NAME":           "wsd",
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318",
			"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
			// Export within half a second instead of the SDK's 5s.
			"OTEL_BSP_SCHEDULE_DELAY": "500",
		}),
	)
	testcontainers.CleanupContainer(t, w)
	if err != nil {
		t.Fatalf("wsd: %v", err)
	}
	defer w.Close()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("wsd logs:\n%s", jtLastLines(w.LogText(context.Background()), 60))
		}
	})
	admin := chaos.NewAdmin(w.AdminURL())
	target := chaos.Target{WS: w.WSURL()}

	// The sessions run one after the other: each waits for a state
	// the server reports in /debug/stats, and concurrent ones would blur
	// those counters.
	pausedTrace := jtPauseResume(ctx, t, target, admin)
	evictedTrace := jtSlowConsumer(ctx, t, target, admin)
	invalidTrace := jtInvalidClose(ctx, t, target, 999, "")
	// A close reason that is not UTF-8 is client-controlled bytes that
	// end up in a span attribute: OTLP requires UTF-8 strings, and one bad
	// string must not make the exporter drop the whole batch with it.
	badReasonTrace := jtInvalidClose(ctx, t, target, 1000, "bye\xff\xfe")
	silentTrace := jtSilent(ctx, t, target)

	want := map[string]string{pausedTrace: "paused", evictedTrace: "evicted", invalidTrace: "invalid close code",
		badReasonTrace: "non-UTF-8 close reason", silentTrace: "silent"}
	spans := map[string]jaeger.Span{}
	err = chaos.Poll(ctx, 2*time.Minute, time.Second, func() error {
		svcs, err := j.Services(ctx)
		if err != nil {
			return err
		}
		if !slices.Contains(svcs, "wsd") {
			return fmt.Errorf("services %v: no wsd yet", svcs)
		}
		traces, err := j.Traces(ctx, jaeger.Query{Service: "wsd", Operation: "ws.session"})
		if err != nil {
			return err
		}
		for _, tr := range traces {
			for _, sp := range tr.Spans {
				if _, ok := want[sp.TraceID]; ok && sp.OperationName == "ws.session" {
					spans[sp.TraceID] = sp
				}
			}
		}
		var missing []string
		for id, name := range want {
			if _, ok := spans[id]; !ok {
				missing = append(missing, name+" ("+id+")")
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d ws.session traces of wsd, missing the sessions %s", len(traces), strings.Join(missing, ", "))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("jaeger at %s: %v", j.QueryURL(), err)
	}

	// The image is the one users run: non-root, both ports exposed, and
	// Docker's HEALTHCHECK (`wsd healthcheck`, no shell in the image)
	// reports it healthy.
	t.Run("image health, user and ports", func(t *testing.T) {
		err := chaos.Poll(ctx, time.Minute, time.Second, func() error {
			insp, err := w.Inspect(ctx)
			if err != nil {
				return err
			}
			if u := insp.Config.User; u == "" || u == "0" || strings.HasPrefix(u, "root") || strings.HasPrefix(u, "0:") {
				return fmt.Errorf("image runs as user %q, want non-root", u)
			}
			exposed := map[string]bool{}
			for p := range insp.Config.ExposedPorts {
				exposed[p.String()] = true
			}
			if !exposed[wsdcontainer.PublicPort] || !exposed[wsdcontainer.AdminPort] {
				return fmt.Errorf("image exposes %v, want %s and %s", exposed, wsdcontainer.PublicPort, wsdcontainer.AdminPort)
			}
			if insp.State.Health == nil {
				return fmt.Errorf("image has no HEALTHCHECK")
			}
			if st := insp.State.Health.Status; st != "healthy" {
				return fmt.Errorf("health %s, want healthy", st)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
	t.Run("paused and resumed", func(t *testing.T) {
		sp := spans[pausedTrace]
		jtTag(t, sp, "ws.endpoint", "echo")
		jtIntTag(t, sp, "ws.close.code", 1000)
		jtTag(t, sp, "ws.close.initiator", "client")
		pause, resume := sp.Events("backpressure.pause"), sp.Events("backpressure.resume")
		if len(pause) == 0 || len(resume) == 0 {
			t.Fatalf("events %v: want backpressure.pause and backpressure.resume", jtEventNames(sp))
		}
		if pause[0].Timestamp > resume[len(resume)-1].Timestamp {
			t.Errorf("last resume at %d is before the first pause at %d", resume[len(resume)-1].Timestamp, pause[0].Timestamp)
		}
		if b := jtIntField(t, pause[0], "ws.buffered_bytes"); b < jtPauseBytes {
			t.Errorf("backpressure.pause with ws.buffered_bytes=%d, want >= pause_bytes %d", b, jtPauseBytes)
		}
		if b := jtIntField(t, resume[0], "ws.buffered_bytes"); b >= jtResumeBytes {
			t.Errorf("backpressure.resume with ws.buffered_bytes=%d, want < resume_bytes %d", b, jtResumeBytes)
		}
	})
	t.Run("evicted as slow consumer", func(t *testing.T) {
		sp := spans[evictedTrace]
		jtTag(t, sp, "ws.endpoint", "topic")
		jtTag(t, sp, "ws.topic", "e2e-jaeger-slow")
		jtIntTag(t, sp, "ws.close.code", 1013)
		jtTag(t, sp, "ws.close.initiator", "server")
		jtTag(t, sp, "otel.status_code", "ERROR")
		ev := sp.Events("slow_consumer")
		if len(ev) != 1 {
			t.Fatalf("events %v: want one slow_consumer", jtEventNames(sp))
		}
		// Eviction happens when the next message would not fit, so the
		// buffer holds more than max_bytes less one message.
		if b := jtIntField(t, ev[0], "ws.buffered_bytes"); b <= jtMaxBytes-jtMessage || b > jtMaxBytes {
			t.Errorf("slow_consumer with ws.buffered_bytes=%d, want in (max_bytes-%d, max_bytes=%d]", b, jtMessage, jtMaxBytes)
		}
	})
	t.Run("invalid close code", func(t *testing.T) {
		sp := spans[invalidTrace]
		jtTag(t, sp, "ws.endpoint", "echo")
		jtIntTag(t, sp, "ws.close.code", 999)
		jtTag(t, sp, "ws.close.initiator", "client")
		jtTag(t, sp, "otel.status_code", "ERROR")
		ev := sp.Events("close.received")
		if len(ev) != 1 {
			t.Fatalf("events %v: want one close.received", jtEventNames(sp))
		}
		if c := jtIntField(t, ev[0], "ws.close.code"); c != 999 {
			t.Errorf("close.received ws.close.code=%d, want 999", c)
		}
		if v, ok := ev[0].Field("ws.close.valid"); !ok || v.String() != "false" {
			t.Errorf("close.received ws.close.valid=%v (present %v), want false", v.Value, ok)
		}
	})
	t.Run("non-UTF-8 close reason", func(t *testing.T) {
		sp := spans[badReasonTrace]
		jtIntTag(t, sp, "ws.close.code", 1000)
		jtTag(t, sp, "ws.close.initiator", "client")
		jtTag(t, sp, "otel.status_code", "ERROR")
		if r, ok := sp.Tag("ws.close.reason"); !ok || !strings.HasPrefix(r.String(), "bye") {
			t.Errorf("ws.close.reason %q (present %v), want the client's reason with the bad bytes replaced", r.String(), ok)
		}
		ev := sp.Events("close.received")
		if len(ev) != 1 {
			t.Fatalf("events %v: want one close.received", jtEventNames(sp))
		}
		if v, ok := ev[0].Field("ws.close.valid"); !ok || v.String() != "false" {
			t.Errorf("close.received ws.close.valid=%v (present %v), want false", v.Value, ok)
		}
	})
	t.Run("heartbeat timeout", func(t *testing.T) {
		sp := spans[silentTrace]
		jtIntTag(t, sp, "ws.close.code", 4000)
		jtTag(t, sp, "ws.close.initiator", "server")
		if len(sp.Events("heartbeat.timeout")) != 1 {
			t.Errorf("events %v: want one heartbeat.timeout", jtEventNames(sp))
		}
	})
}

// jtPauseResume floods /ws/echo without reading until wsd pauses the
// session, then reads until it resumes, then closes with 1000. It
// returns the session's trace id.
func jtPauseResume(ctx context.Context, t *testing.T, target chaos.Target, admin *chaos.Admin) string {
	t.Helper()
	trace, tp := jtTraceparent(t)
	// A small receive buffer, so the echoes back up into wsd sooner.
	c, err := chaos.Dial(ctx, target.EchoURL(), chaos.WithRecvBuffer(4096), chaos.WithHeader("traceparent", tp))
	if err != nil {
		t.Fatalf("flooder: %v", err)
	}
	defer c.Close()

	// The writer stops at the first error, when asked, or after 64 MiB:
	// the wire between here and wsd buffers a few MiB at most.
	var stop atomic.Bool
	written := make(chan error, 1)
	go func() {
		payload := make([]byte, jtMessage)
		for i := 0; i < 2048 && !stop.Load(); i++ {
			if err := c.WriteMessage(chaos.OpBinary, payload); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	err = chaos.Poll(ctx, time.Minute, 20*time.Millisecond, func() error {
		st, err := admin.Stats(ctx)
		if err != nil {
			return err
		}
		if st.Paused != 1 {
			return fmt.Errorf("paused sessions %d, want 1 (buffered %d bytes)", st.Paused, st.BufferedBytes)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("flooder never paused: %v", err)
	}

	// Read from now on; wsd drains below resume_bytes and resumes.
	stop.Store(true)
	closed := make(chan error, 1)
	go func() {
		for {
			_, _, err := c.ReadMessage()
			var ce *chaos.CloseError
			if errors.As(err, &ce) {
				if ce.Code != 1000 {
					err = fmt.Errorf("server answered close %d, want 1000", ce.Code)
				} else {
					err = nil
				}
				closed <- err
				return
			}
			if err != nil {
				closed <- err
				return
			}
		}
	}()
	err = chaos.Poll(ctx, time.Minute, 20*time.Millisecond, func() error {
		st, err := admin.Stats(ctx)
		if err != nil {
			return err
		}
		if st.Paused != 0 {
			return fmt.Errorf("paused sessions %d, want 0 (buffered %d bytes)", st.Paused, st.BufferedBytes)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("flooder never resumed: %v", err)
	}
	if err := jtWait(ctx, written, time.Minute); err != nil {
		t.Fatalf("flooder write: %v", err)
	}
	if err := c.WriteClose(1000, "done"); err != nil {
		t.Fatalf("flooder close: %v", err)
	}
	if err := jtWait(ctx, closed, time.Minute); err != nil {
		t.Fatalf("flooder close handshake: %v", err)
	}
	return trace
}

// jtSlowConsumer subscribes a client that never reads to a topic and
// publishes to it until wsd evicts the subscriber. It returns the
// subscriber's trace id.
func jtSlowConsumer(ctx context.Context, t *testing.T, target chaos.Target, admin *chaos.Admin) string {
	t.Helper()
	const topic = "e2e-jaeger-slow"
	before, err := admin.Stats(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	trace, tp := jtTraceparent(t)
	sub, err := chaos.Dial(ctx, target.TopicURL(topic), chaos.WithRecvBuffer(4096), chaos.WithHeader("traceparent", tp))
	if err != nil {
		t.Fatalf("subscriber: %v", err)
	}
	defer sub.Close()
	pub, err := chaos.Dial(ctx, target.TopicURL(topic))
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	defer pub.Close()
	// The publisher reads (pings; wsd does not echo to the sender) so
	// that it stays live and never backs up itself.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if _, _, err := pub.ReadMessage(); err != nil {
				return
			}
		}
	}()
	defer wg.Wait()
	defer pub.Close()

	payload := make([]byte, jtMessage)
	evicted := func() (bool, error) {
		st, err := admin.Stats(ctx)
		return st.EvictedTotal > before.EvictedTotal, err
	}
	done := false
	for i := 0; i < 2048 && !done; i++ {
		if err := pub.WriteMessage(chaos.OpBinary, payload); err != nil {
			t.Fatalf("publish: %v", err)
		}
		if i%16 == 15 {
			if done, err = evicted(); err != nil {
				t.Fatalf("stats: %v", err)
			}
		}
	}
	err = chaos.Poll(ctx, 30*time.Second, 50*time.Millisecond, func() error {
		if ok, err := evicted(); err != nil || !ok {
			return fmt.Errorf("subscriber not evicted after 64 MiB published (err %v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// What the subscriber sees: the messages wsd had written, then 1013
	// if the close frame fitted in the socket, else the connection's end.
	code, msgs, err := sub.ReadUntilClose(30 * time.Second)
	t.Logf("slow subscriber read %d messages, then close code %d (err %v)", msgs, code, err)
	_ = pub.CloseGracefully(5 * time.Second)
	return trace
}

// jtInvalidClose sends a close frame that breaks RFC 6455 §7.4 (a code
// not allowed on the wire, or a reason that is not UTF-8) and expects
// 1002 back. It returns the trace id.
func jtInvalidClose(ctx context.Context, t *testing.T, target chaos.Target, code uint16, reason string) string {
	t.Helper()
	trace, tp := jtTraceparent(t)
	c, err := chaos.Dial(ctx, target.EchoURL(), chaos.WithHeader("traceparent", tp))
	if err != nil {
		t.Fatalf("invalid closer: %v", err)
	}
	defer c.Close()
	if err := c.WriteClose(code, reason); err != nil {
		t.Fatalf("write close %d %q: %v", code, reason, err)
	}
	got, _, err := c.ReadUntilClose(30 * time.Second)
	if err != nil || got != 1002 {
		t.Fatalf("after close %d %q the server answered code %d (err %v), want 1002", code, reason, got, err)
	}
	return trace
}

// jtSilent opens a session that never answers pings and waits for wsd
// to close it with 4000. It returns the trace id.
func jtSilent(ctx context.Context, t *testing.T, target chaos.Target) string {
	t.Helper()
	trace, tp := jtTraceparent(t)
	c, err := chaos.Dial(ctx, target.EchoURL(), chaos.WithHeader("traceparent", tp))
	if err != nil {
		t.Fatalf("silent client: %v", err)
	}
	defer c.Close()
	c.SetAutoPong(false)
	code, _, err := c.ReadUntilClose(time.Minute)
	if err != nil || code != 4000 {
		t.Fatalf("silent client: close code %d (err %v), want 4000", code, err)
	}
	return trace
}

// jtTraceparent returns a fresh sampled W3C trace context: the trace id
// (as Jaeger prints it) and the traceparent header value.
func jtTraceparent(t *testing.T) (traceID, header string) {
	t.Helper()
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	traceID, spanID := hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
	return traceID, "00-" + traceID + "-" + spanID + "-01"
}

func jtWait(ctx context.Context, ch <-chan error, d time.Duration) error {
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		return fmt.Errorf("no result within %s", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func jtTag(t *testing.T, sp jaeger.Span, key, want string) {
	t.Helper()
	kv, ok := sp.Tag(key)
	if !ok {
		t.Errorf("span %s has no %s tag (tags %v)", sp.SpanID, key, sp.Tags)
		return
	}
	if kv.String() != want {
		t.Errorf("span %s: %s=%q, want %q", sp.SpanID, key, kv.String(), want)
	}
}

func jtIntTag(t *testing.T, sp jaeger.Span, key string, want int64) {
	t.Helper()
	kv, ok := sp.Tag(key)
	if !ok {
		t.Errorf("span %s has no %s tag (tags %v)", sp.SpanID, key, sp.Tags)
		return
	}
	got, err := kv.Int()
	if err != nil || got != want {
		t.Errorf("span %s: %s=%v (%v), want int %d", sp.SpanID, key, kv.Value, err, want)
	}
}

func jtIntField(t *testing.T, l jaeger.Log, key string) int64 {
	t.Helper()
	kv, ok := l.Field(key)
	if !ok {
		t.Fatalf("event %s has no %s field (fields %v)", l.Name(), key, l.Fields)
	}
	v, err := kv.Int()
	if err != nil {
		t.Fatalf("event %s: %v", l.Name(), err)
	}
	return v
}

func jtEventNames(sp jaeger.Span) []string {
	out := make([]string, 0, len(sp.Logs))
	for _, l := range sp.Logs {
		out = append(out, l.Name())
	}
	return out
}

func jtLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
