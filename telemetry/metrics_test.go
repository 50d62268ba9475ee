package telemetry

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

// TestEchoMetrics drives three echo sessions over real sockets and checks
// every per-session and per-message instrument. The sessions close with
// 1000, a private code and an invalid code: the close counter carries
// "1000", "private" and "invalid", never a raw client code.
func TestEchoMetrics(t *testing.T) {
	f := start(t, fixtureOpts{})
	payload := make([]byte, 100)
	var conns []*wstest.Conn
	// One more than the depth sampling period per connection: one
	// sampled send-buffer depth each.
	const perConn = depthSampleEvery + 1
	const total = 3 * perConn
	for range 3 {
		c := wstest.MustDialRaw(t, f.wsURL("/ws/echo"))
		for range perConn {
			if err := c.Echo(payload); err != nil {
				t.Fatal(err)
			}
		}
		conns = append(conns, c)
	}
	rm := f.collect(t)
	if v, _ := intValue(rm, "wsd.connections.active", keyEndpoint.String("echo")); v != 3 {
		t.Errorf("wsd.connections.active{echo} = %d with 3 open, want 3", v)
	}
	for i, code := range []uint16{1000, 4321, 999} {
		if err := conns[i].WriteClose(code, ""); err != nil {
			t.Fatal(err)
		}
	}
	f.waitIdle(t)
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(f.endedSpans(spanSession)); n != 3 {
			return fmt.Errorf("%d sessions ended", n)
		}
		return nil
	})
	rm = f.collect(t)

	echo := keyEndpoint.String("echo")
	for _, c := range []struct {
		name string
		want int64
		kv   []attribute.KeyValue
	}{
		{"wsd.connections.opened", 3, []attribute.KeyValue{echo}},
		{"wsd.connections.active", 0, []attribute.KeyValue{echo}},
		{"wsd.messages.received", total, []attribute.KeyValue{echo}},
		{"wsd.messages.sent", total, []attribute.KeyValue{echo}},
		{"wsd.payload.received", total * 100, []attribute.KeyValue{echo}},
		{"wsd.payload.sent", total * 100, []attribute.KeyValue{echo}},
		{"wsd.send_buffer.usage", 0, nil},
	} {
		if got, ok := intValue(rm, c.name, c.kv...); !ok || got != c.want {
			t.Errorf("%s%v = %d (present %v), want %d", c.name, c.kv, got, ok, c.want)
		}
	}
	// Sampled one received message in sizeSampleEvery per endpoint.
	if n, sum := histCount[int64](rm, "wsd.message.size", echo); n != total/sizeSampleEvery || sum != int64(n)*100 {
		t.Errorf("wsd.message.size: %d recordings summing %d, want %d, each 100", n, sum, total/sizeSampleEvery)
	}
	// Sampled one queued message in depthSampleEvery per connection.
	if n, sum := histCount[int64](rm, "wsd.send_buffer.depth", echo); n != 3 || sum < int64(n)*100 {
		t.Errorf("wsd.send_buffer.depth: %d recordings summing %d, want 3, each ≥ its message", n, sum)
	}
	if n, _ := histCount[float64](rm, "wsd.session.duration", echo, keyInitiator.String("client")); n != 3 {
		t.Errorf("wsd.session.duration{echo,client}: %d recordings, want 3", n)
	}

	checkCardinality(t, rm, []uint16{1000, 4321, 999})
	closed, ok := findMetric(rm, "wsd.connections.closed")
	if !ok {
		t.Fatal("wsd.connections.closed missing")
	}
	point := func(label string) metricdata.DataPoint[int64] {
		return metricdata.DataPoint[int64]{Value: 1, Attributes: attribute.NewSet(echo,
			keyCloseCode.String(label), keyInitiator.String("client"))}
	}
	metricdatatest.AssertEqual(t, metricdata.Metrics{
		Name:        "wsd.connections.closed",
		Description: "WebSocket connections ended, by close code and initiator.",
		Unit:        "{connection}",
		Data: metricdata.Sum[int64]{
			Temporality: metricdata.CumulativeTemporality,
			IsMonotonic: true,
			DataPoints:  []metricdata.DataPoint[int64]{point("1000"), point("private"), point("invalid")},
		},
	}, closed, metricdatatest.IgnoreTimestamp())

	// The invalid close frame is an error on the span; the others are not.
	for _, s := range f.endedSpans(spanSession) {
		code := attrs(s.Attributes())[keyCloseCode].AsInt64()
		if wantErr := code == 999; (s.Status().Code == codes.Error) != wantErr {
			t.Errorf("session closed with %d: status %+v", code, s.Status())
		}
	}
}

// TestHeartbeatTimeoutMetrics: a client that never answers pings is
// closed with 4000; counted, and recorded on its span.
func TestHeartbeatTimeoutMetrics(t *testing.T) {
	f := start(t, fixtureOpts{svc: func(c *service.Config) {
		c.Heartbeat.PingInterval = 100 * time.Millisecond
		c.Heartbeat.PongTimeout = 100 * time.Millisecond
	}})
	_ = wstest.MustDialRaw(t, f.wsURL("/ws/echo"))
	span := f.waitSpan(t, spanSession)
	rm := f.collect(t)
	if v, _ := intValue(rm, "wsd.heartbeat.timeouts", keyEndpoint.String("echo")); v != 1 {
		t.Errorf("wsd.heartbeat.timeouts = %d, want 1", v)
	}
	if v, _ := intValue(rm, "wsd.connections.closed", keyCloseCode.String("4000"), keyInitiator.String("server")); v != 1 {
		t.Errorf("wsd.connections.closed{4000,server} = %d, want 1", v)
	}
	found := false
	for _, ev := range span.Events() {
		found = found || ev.Name == eventHeartbeatTimeout
	}
	if !found || span.Status().Code != codes.Error || attrs(span.Attributes())[keyCloseCode].AsInt64() != 4000 {
		t.Errorf("span events %v status %+v attributes %v", span.Events(), span.Status(), span.Attributes())
	}
}

// TestDroppedMetric: under slow_consumer: drop, messages discarded for a
// subscriber that does not read are counted, with a fixed reason, and
// the total lands on its span as ws.dropped.
func TestDroppedMetric(t *testing.T) {
	f := start(t, fixtureOpts{svc: func(c *service.Config) {
		c.Backpressure.SlowConsumer = service.SlowConsumerDrop
		c.Heartbeat.PingInterval = time.Minute
	}})
	sub, pub := f.slowSubscriber(t, "news")
	publishUntil(t, pub, 10000, "drop", func() bool {
		v, _ := intValue(f.collect(t), "wsd.messages.dropped")
		return v >= 1
	})
	_ = sub.Close()
	span := f.waitSpan(t, spanSession)
	rm := f.collect(t)
	dropped, _ := intValue(rm, "wsd.messages.dropped", keyDropReason.String("slow_consumer"))
	if total := f.srv.Stats().DroppedTotal; dropped < 1 || dropped != total {
		t.Errorf("wsd.messages.dropped = %d, service counted %d", dropped, total)
	}
	if got := attrs(span.Attributes())[keyDropped].AsInt64(); got != dropped {
		t.Errorf("span ws.dropped = %d, want %d", got, dropped)
	}
}

// TestAcceptErrorMetric lowers RLIMIT_NOFILE in-process until accept
// fails with EMFILE, and checks wsd.accept.errors{error.type=emfile}.
// The server keeps working afterwards.
func TestAcceptErrorMetric(t *testing.T) {
	f := start(t, fixtureOpts{})
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	n, ok := openDescriptors()
	if !ok {
		t.Fatal("descriptor count unavailable: /proc/self/fd (Linux) is required")
	}
	lowered := orig
	lowered.Cur = uint64(n) + 32
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	var fillers []*os.File
	restore := func() {
		for _, fl := range fillers {
			_ = fl.Close()
		}
		fillers = nil
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)
	}
	defer restore()
	// Fill the table, then free one descriptor for the client's socket:
	// the server's accept has none left.
	for range 64 {
		fl, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("open: %v", err)
			}
			break
		}
		fillers = append(fillers, fl)
	}
	// Another goroutine (the server's descriptor sampling) may take the
	// freed descriptor first: then free one more, a few times at most.
	var client net.Conn
	for attempt := 0; client == nil; attempt++ {
		if attempt == 5 || len(fillers) == 0 {
			restore()
			t.Fatal("could not leave exactly the client's descriptor free")
		}
		_ = fillers[len(fillers)-1].Close()
		fillers = fillers[:len(fillers)-1]
		c, err := net.DialTimeout("tcp", f.srv.Addr().String(), 5*time.Second)
		if err != nil && !errors.Is(err, syscall.EMFILE) {
			restore()
			t.Fatalf("dial: %v", err)
		}
		client = c
	}
	defer client.Close()
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if v, _ := intValue(f.collect(t), "wsd.accept.errors", keyErrorType.String("emfile")); v < 1 {
			return errors.New("no emfile accept error counted")
		}
		return nil
	})
	restore()
	// Right after EMFILE the listener sheds pending connections for a
	// moment (503): poll until upgrades succeed again.
	wstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c, resp, err := wstest.DialRaw(f.wsURL("/ws/echo"))
		if err != nil {
			return err
		}
		defer c.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return c.Echo([]byte("still serving"))
	})
}

// TestProcessAndRuntimeMetrics: the descriptor gauges match the process
// and the Go runtime metrics are registered.
func TestProcessAndRuntimeMetrics(t *testing.T) {
	f := start(t, fixtureOpts{})
	rm := f.collect(t)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if v, _ := intValue(rm, "wsd.file_descriptor.limit"); v != int64(rl.Cur) {
		t.Errorf("wsd.file_descriptor.limit = %d, want RLIMIT_NOFILE %d", v, rl.Cur)
	}
	count, ok := intValue(rm, "process.unix.file_descriptor.count")
	now, _ := openDescriptors()
	// Loose bounds: other goroutines may open or close a few meanwhile.
	if !ok || count < 4 || count > now+16 {
		t.Errorf("process.unix.file_descriptor.count = %d (present %v), process has about %d", count, ok, now)
	}
	var names []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			names = append(names, m.Name)
		}
	}
	for _, want := range []string{"go.goroutine.count", "go.memory.used"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("runtime metric %s missing from %v", want, names)
		}
	}
}
