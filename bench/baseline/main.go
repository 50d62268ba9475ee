// Command baseline is the reference point of the wsd benchmarks: a bare
// github.com/lxzan/gws server with default options, serving the same two
// endpoints as wsd (/ws/echo and /ws/topics/{topic}) with none of wsd's
// protections (no admission caps, backpressure, heartbeat, telemetry).
// cmd/wsbench drives it and wsd with the same client in the same run, so
// every wsd figure is reported as a ratio to this server.
//
//	baseline --listen 127.0.0.1:18081
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/lxzan/gws"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18081", "address to serve /ws/echo and /ws/topics/{topic} on")
	flag.Parse()
	if err := serve(*listen); err != nil {
		fmt.Fprintf(os.Stderr, "baseline: %v\n", err)
		os.Exit(1)
	}
}

func serve(addr string) error {
	h := &handler{topics: map[string]map[*gws.Conn]struct{}{}}
	// nil options: gws defaults, as a user who copies the gws README gets.
	up := gws.NewUpgrader(h, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("/ws/echo", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	})
	mux.HandleFunc("/ws/topics/", func(w http.ResponseWriter, r *http.Request) {
		topic := strings.TrimPrefix(r.URL.Path, "/ws/topics/")
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		h.subscribe(topic, c)
		go c.ReadLoop()
	})
	fmt.Printf("baseline listening on %s\n", addr)
	return http.ListenAndServe(addr, mux)
}

// handler echoes on /ws/echo and, on /ws/topics/{topic}, sends every
// message to the topic's other connections with a gws.Broadcaster (the
// frame is encoded once; each write goes through the connection's
// asynchronous queue), which is how gws documents fan-out.
type handler struct {
	mu     sync.RWMutex
	topics map[string]map[*gws.Conn]struct{}
}

func (h *handler) subscribe(topic string, c *gws.Conn) {
	c.Session().Store("topic", topic)
	h.mu.Lock()
	defer h.mu.Unlock()
	subs := h.topics[topic]
	if subs == nil {
		subs = map[*gws.Conn]struct{}{}
		h.topics[topic] = subs
	}
	subs[c] = struct{}{}
}

func (h *handler) OnOpen(*gws.Conn) {}

func (h *handler) OnClose(c *gws.Conn, _ error) {
	v, ok := c.Session().Load("topic")
	if !ok {
		return
	}
	topic := v.(string)
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.topics[topic], c)
	if len(h.topics[topic]) == 0 {
		delete(h.topics, topic)
	}
}

func (h *handler) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }

func (h *handler) OnPong(*gws.Conn, []byte) {}

func (h *handler) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	v, ok := c.Session().Load("topic")
	if !ok {
		_ = c.WriteMessage(m.Opcode, m.Bytes())
		return
	}
	payload := append([]byte(nil), m.Bytes()...)
	b := gws.NewBroadcaster(m.Opcode, payload)
	defer b.Close()
	h.mu.RLock()
	defer h.mu.RUnlock()
	for sub := range h.topics[v.(string)] {
		if sub != c {
			_ = b.Broadcast(sub)
		}
	}
}
