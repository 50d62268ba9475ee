package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

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
	conn, client := wstest.DialGWS(t, "ws://"+p.public+"/ws/topics/room", true)
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if st := p.busStats(t); st.Subscriptions != 1 {
			return fmt.Errorf("bus stats %+v, want 1 broker subscription", st)
		}
		return nil
	})
	// A message from another replica (here a bare NATS client with wsd's
	// headers) is fanned out and timed: every wsd_bus_* family exists.
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	err = nc.PublishMsg(&nats.Msg{Subject: "wsd.t.room", Data: []byte("remote"), Header: nats.Header{
		"Wsd-Opcode": {"text"}, "Wsd-Sent": {strconv.FormatInt(time.Now().UnixNano(), 10)},
	}})
	if err == nil {
		err = nc.Flush()
	}
	nc.Close()
	if err != nil {
		t.Fatal(err)
	}
	wstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := client.Count(); n != 1 {
			return fmt.Errorf("subscriber received %d messages, want the remote one", n)
		}
		return nil
	})
	_, body = p.metrics(t)
	served := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok && strings.HasPrefix(rest, "wsd_bus_") {
			served[strings.Fields(rest)[0]] = true
		}
	}
	documented := readmeBusMetrics(t)
	for name := range documented {
		if !served[name] {
			t.Errorf("README bus metric %s is not served on /metrics", name)
		}
	}
	for name := range served {
		if !documented[name] {
			t.Errorf("/metrics serves %s, missing from the README bus metrics table", name)
		}
	}
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

// readmeBusMetrics returns the Prometheus names of the metrics table in
// the README's "Running several replicas" section.
func readmeBusMetrics(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Running several replicas\n")
	if !ok {
		t.Fatal("README has no Running several replicas section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	row := regexp.MustCompile("(?m)^\\| `wsd\\.bus\\.[a-z_.]+` \\| `([a-z0-9_]+)` \\|")
	names := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		names[m[1]] = true
	}
	if len(names) < 6 {
		t.Fatalf("found %d bus metric rows in the README, want the whole table", len(names))
	}
	return names
}
