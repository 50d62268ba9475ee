package natsbus

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/wsd-dev/wsd/internal/wstest"
	"github.com/wsd-dev/wsd/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait is the generous bound of every poll: a loaded machine may be slow,
// never this slow.
const wait = 20 * time.Second

// startNATS runs an in-process nats-server on 127.0.0.1:port (-1: a
// random port) and returns it once it accepts clients. It is shut down
// at cleanup, unless the test did already.
func startNATS(t testing.TB, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true, HTTPPort: 0})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(wait) {
		ns.Shutdown()
		t.Fatalf("nats-server on port %d not ready within %s", port, wait)
	}
	t.Cleanup(func() { stopNATS(ns) })
	return ns
}

// stopNATS shuts ns down and waits until it is gone; safe to repeat.
func stopNATS(ns *server.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}

func natsPort(ns *server.Server) int { return ns.Addr().(*net.TCPAddr).Port }

// testBusConfig points at ns with short reconnect pauses, so that a
// restarted broker is found again quickly.
func testBusConfig(ns *server.Server) Config {
	c := DefaultConfig()
	c.URL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort(ns))
	c.ReconnectWait, c.ReconnectWaitMax = 20*time.Millisecond, 100*time.Millisecond
	return c
}

// replica is one wsd server with its NATS bus.
type replica struct {
	name string
	srv  *service.Server
	bus  *Bus
}

func (r *replica) url(topic string) string {
	return "ws://" + r.srv.Addr().String() + "/ws/topics/" + topic
}

// startReplica runs a wsd server on its own NATS bus. At cleanup the
// server stops first, then the bus closes (cmd/wsd's order).
func startReplica(t testing.TB, name string, cfg Config, opts ...any) *replica {
	t.Helper()
	var bopts []Option
	var sopts []service.Option
	for _, o := range opts {
		switch o := o.(type) {
		case Option:
			bopts = append(bopts, o)
		case service.Option:
			sopts = append(sopts, o)
		default:
			t.Fatalf("startReplica: option of type %T", o)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", name)
	}
	bus, err := New(cfg, append([]Option{WithLogger(log)}, bopts...)...)
	if err != nil {
		t.Fatalf("natsbus.New: %v", err)
	}
	t.Cleanup(func() {
		if err := bus.Close(); err != nil {
			t.Errorf("%s: bus close: %v", name, err)
		}
	})
	sc := service.DefaultConfig()
	sc.Listen, sc.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	sc.Limits.UpgradeRate, sc.Limits.UpgradeBurst = 100000, 100000
	sc.Limits.MaxConnectionsPerIP = 100000
	sc.Limits.MessageRate = 0
	sc.Shutdown.DrainTimeout = 5 * time.Second
	srv, err := service.New(sc, append([]service.Option{service.WithBus(bus), service.WithLogger(log)}, sopts...)...)
	if err != nil {
		t.Fatalf("service.New: %v", err)
	}
	wstest.Serve(t, srv.Serve, srv.Ready())
	return &replica{name: name, srv: srv, bus: bus}
}

// testWriter sends log lines to the test log (with -v only).
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// subscriber is a topic client of one replica.
type subscriber struct {
	conn *gws.Conn
	*wstest.Client
}

// subscribe connects a client to topic on r and waits until r counts
// it, so that local publishes reach it from now on.
func subscribe(t testing.TB, r *replica, topic string) *subscriber {
	t.Helper()
	before := r.srv.Stats().Subscribers
	conn, c := wstest.DialGWS(t, r.url(topic), true)
	waitStats(t, r, fmt.Sprintf("%d subscribers", before+1), func(st service.Stats) bool { return st.Subscribers >= before+1 })
	return &subscriber{conn: conn, Client: c}
}

func (s *subscriber) send(t testing.TB, msg string) {
	t.Helper()
	if err := s.conn.WriteMessage(gws.OpcodeText, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
}

// texts returns the messages s received, as strings, without the probes.
func (s *subscriber) texts() []string {
	var out []string
	for _, m := range s.Messages() {
		if !strings.HasPrefix(string(m), "probe") {
			out = append(out, string(m))
		}
	}
	return out
}

func (s *subscriber) probes() int {
	n := 0
	for _, m := range s.Messages() {
		if strings.HasPrefix(string(m), "probe") {
			n++
		}
	}
	return n
}

// room is two replicas on one NATS server with topic "room": a
// publisher and a subscriber on A, a subscriber on B, linked.
type room struct {
	ns                       *server.Server
	a, b                     *replica
	pub, localSub, remoteSub *subscriber
}

// startRoom starts the replicas and subscribers of a room.
func startRoom(t testing.TB) room {
	t.Helper()
	r := room{ns: startNATS(t, -1)}
	r.a = startReplica(t, "A", testBusConfig(r.ns))
	r.b = startReplica(t, "B", testBusConfig(r.ns))
	r.pub = subscribe(t, r.a, "room")
	r.localSub = subscribe(t, r.a, "room")
	r.remoteSub = subscribe(t, r.b, "room")
	link(t, r.pub, r.remoteSub)
	return r
}

// link makes sure messages from pub reach sub across replicas: a NATS
// subscription is live only once the server processed it, which no
// client-side count shows, so pub publishes probes until sub gets one.
// Probes are left out of texts.
func link(t testing.TB, pub, sub *subscriber) {
	t.Helper()
	i := 0
	wstest.CheckFor(t, wait, 20*time.Millisecond, func() error {
		if sub.probes() > 0 {
			return nil
		}
		i++
		pub.send(t, fmt.Sprintf("probe %d", i))
		return fmt.Errorf("no probe delivered after %d sent", i)
	})
}

// waitStats polls r's stats until ok holds.
func waitStats(t testing.TB, r *replica, want string, ok func(service.Stats) bool) service.Stats {
	t.Helper()
	var st service.Stats
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		st = r.srv.Stats()
		if ok(st) {
			return nil
		}
		return fmt.Errorf("%s: want %s, stats %+v", r.name, want, st)
	})
	return st
}

// waitTexts polls until s received want (probes aside), and fails at
// once on anything else: a wrong, extra or out-of-order message.
func waitTexts(t testing.TB, s *subscriber, who string, want []string) {
	t.Helper()
	wstest.CheckFor(t, wait, 10*time.Millisecond, func() error {
		got := s.texts()
		for i, g := range got {
			if i >= len(want) || g != want[i] {
				t.Fatalf("%s: message %d is %q; received %q, want exactly %q", who, i, g, got, want)
			}
		}
		if len(got) < len(want) {
			return fmt.Errorf("%s: %d of %d messages (last %q)", who, len(got), len(want), got)
		}
		return nil
	})
}
