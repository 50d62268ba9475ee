package natsbus

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// stalledBroker speaks just enough NATS to let a client connect (INFO,
// then PONG to the client's first PING) and then never reads again: a
// broker whose socket is full, the case where nats.go's Publish blocks.
type stalledBroker struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startStalledBroker(t *testing.T) *stalledBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &stalledBroker{ln: ln}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*net.TCPConn).SetReadBuffer(4096)
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			b.wg.Go(func() { handshake(c) })
		}
	})
	t.Cleanup(b.stop)
	return b
}

func handshake(c net.Conn) {
	_, _ = fmt.Fprintf(c, "INFO {\"server_id\":\"stalled\",\"version\":\"2.15.3\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n")
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.TrimSpace(line) == "PING" {
			_, _ = c.Write([]byte("PONG\r\n"))
			return // and never read again
		}
	}
}

// stop closes the listener and every connection; safe to repeat.
func (b *stalledBroker) stop() {
	_ = b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// TestStalledBrokerNeverBlocks: with a broker that accepts nothing, a
// publishing session's read loop keeps going (every message reaches the
// local subscriber, in order), /debug/stats answers, and the messages
// the broker cannot take are dropped and counted, not queued without
// bound.
func TestStalledBrokerNeverBlocks(t *testing.T) {
	broker := startStalledBroker(t)
	cfg := DefaultConfig()
	cfg.URL = "nats://" + broker.ln.Addr().String()
	cfg.PublishQueue = 4
	cfg.WriteTimeout = time.Minute // the stall outlasts the test
	a := startReplica(t, "A", cfg)
	// Unstall before the cleanups: the bus's writer is blocked on the
	// stalled socket, and Close waits for it.
	defer broker.stop()
	waitStats(t, a, "bus_connected", func(st service.Stats) bool { return st.BusConnected })

	pub := subscribe(t, a, "room")
	local := subscribe(t, a, "room")
	const n = 500
	pad := strings.Repeat("x", 32<<10)
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("%04d %s", i, pad)
		pub.send(t, want[i])
	}
	waitTexts(t, local, "local subscriber", want)
	st := waitStats(t, a, "messages dropped", func(st service.Stats) bool { return st.BusDroppedTotal > 0 })
	// What the broker path holds: the queue, one message in the writer
	// and what the socket buffers took; everything else is counted.
	if held := n - st.BusDroppedTotal - st.BusPublishedTotal; held < 0 || held > int64(cfg.PublishQueue)+1 {
		t.Fatalf("published %d + dropped %d of %d: %d held, want at most publish_queue+1 = %d",
			st.BusPublishedTotal, st.BusDroppedTotal, n, held, cfg.PublishQueue+1)
	}
	if d := a.bus.dropQueue.Load(); d == 0 {
		t.Fatalf("no publish_queue_full drops with a stalled broker (stats %+v)", st)
	}
}
