package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// busStats is the bus part of /debug/stats.
type busStats struct {
	Connected     bool  `json:"bus_connected"`
	Subscriptions int   `json:"bus_subscriptions"`
	Published     int64 `json:"bus_published_total"`
	Dropped       int64 `json:"bus_dropped_total"`
}

func (p *wsdProcess) busStats(t *testing.T) busStats {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/debug/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st busStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBusWiring: with bus.kind=nats wsd connects to the configured NATS
// server, reports the link in /debug/stats and exports the wsd.bus.*
// series (at zero before any traffic), and exits 0 after draining the
// connection; with the default local bus the link is reported as up.
func TestBusWiring(t *testing.T) {
	clearOTELEnv(t)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(20 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	p := startWsd(t, "--bus.kind=nats", "--bus.nats.url="+ns.ClientURL())
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if st := p.busStats(t); !st.Connected {
			return fmt.Errorf("bus stats %+v, want connected", st)
		}
		return nil
	})
	_, body := p.metrics(t)
	for _, series := range []string{
		`wsd_bus_connected{`, `wsd_bus_messages_total{otel_scope_name="github.com/wsd-dev/wsd/natsbus"`,
		`ws_drop_reason="disconnected"`, `ws_drop_reason="slow_consumer"`, `ws_bus_direction="received"`,
		`wsd_bus_reconnects_total{`, `wsd_bus_subscriptions{`,
	} {
		if !strings.Contains(body, series) {
			t.Errorf("/metrics lacks %s:\n%s", series, grepLines(body, "wsd_bus"))
		}
	}
	conn, _ := wstest.DialGWS(t, "ws://"+p.public+"/ws/topics/room", true)
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if st := p.busStats(t); st.Subscriptions != 1 {
			return fmt.Errorf("bus stats %+v, want 1 broker subscription", st)
		}
		return nil
	})
	if err := conn.WriteString("hello"); err != nil {
		t.Fatal(err)
	}
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if st := p.busStats(t); st.Published != 1 {
			return fmt.Errorf("bus stats %+v, want 1 message published", st)
		}
		return nil
	})
	if code, ok := p.stop(t); !ok || code != 0 {
		t.Fatalf("wsd with the nats bus: exit %d (returned %v), want 0", code, ok)
	}
	// The server notices the closed connection on its own time.
	wstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := ns.NumClients(); n != 0 {
			return fmt.Errorf("nats-server still has %d clients after wsd exited: the connection was not closed", n)
		}
		return nil
	})

	local := startWsd(t)
	if st := local.busStats(t); st != (busStats{Connected: true}) {
		t.Fatalf("local bus stats %+v, want connected and nothing else", st)
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
