package main

import (
	"context"
	"errors"

	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats-server/v2/server"
)

// clusterConfig is one two-replica fan-out run: subscribers split evenly
// over replicas a and b, which share topics through a NATS server, and
// one publisher on a. Subscribers on a are served locally; those on b
// get each message through the broker.
type clusterConfig struct {
	dialA, dialB dialOptions // topic endpoints of a and b
	subs         int         // subscribers in total, half on each replica
	rate         float64
	size         int
	warmup       time.Duration
	window       time.Duration
	pidA, pidB   int // replica processes; 0: not sampled
}

// ClusterSide is what the subscribers of one replica saw.
type ClusterSide struct {
	Subscribers int `json:"subscribers"`
	// Delivered counts messages received in the window; DeliveryRatio is
	// Delivered / (Published × Subscribers).
	Delivered     int64   `json:"delivered"`
	DeliveryRatio float64 `json:"delivery_ratio"`
	Latency       Latency `json:"latency"` // publish to delivery
	// ServerCPUSeconds is the replica's CPU over the window and
	// CPUPerDeliveryUS that divided by Delivered. The publishing replica's
	// figure includes handing every message to NATS.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	CPUPerDeliveryUS float64 `json:"cpu_per_delivery_us"`
	// Closed counts subscribers the replica closed (must be 0).
	Closed int64 `json:"closed"`
}

// ClusterResult is what `wsbench cluster` prints: the local path
// (publisher and subscribers on a) and the remote one (subscribers on b)
// measured in the same run, under the same publisher.
type ClusterResult struct {
	Rate        float64     `json:"publish_rate"`
	PayloadSize int         `json:"payload_bytes"`
	Seconds     float64     `json:"seconds"`
	Published   int64       `json:"published"` // in the window
	Local       ClusterSide `json:"local"`
	Remote      ClusterSide `json:"remote"`
	// NATSURL is the in-process broker both replicas used.
	NATSURL string `json:"nats_url,omitempty"`
}

// runClusterFanout connects the subscribers, probes until each has a
// message (every subscription registered, remote interest included),
// then publishes on a at cfg.rate and measures both sides.
func runClusterFanout(ctx context.Context, cfg clusterConfig) (ClusterResult, error) {
	res := ClusterResult{Rate: cfg.rate, PayloadSize: cfg.size}
	if cfg.size < stampBytes || cfg.subs < 2 || cfg.rate <= 0 {
		return res, fmt.Errorf("cluster: need size >= %d, subscribers >= 2, rate > 0", stampBytes)
	}
	type side struct {
		dial        dialOptions
		n           int
		rec         *latencyRecorder
		seen, count atomic.Int64
		closed      atomic.Int64
		conns       []*gws.Conn
		pid         int
		out         *ClusterSide
	}
	sides := []*side{
		{dial: cfg.dialA, n: cfg.subs / 2, rec: newLatencyRecorder(), pid: cfg.pidA, out: &res.Local},
		{dial: cfg.dialB, n: cfg.subs - cfg.subs/2, rec: newLatencyRecorder(), pid: cfg.pidB, out: &res.Remote},
	}
	for _, s := range sides {
		conns, err := dialAll(ctx, s.dial, s.n, func(i int) gws.Event {
			return &subscriber{baseEvent: baseEvent{closed: &s.closed}, idx: i, rec: s.rec, seen: &s.seen, count: &s.count}
		})
		if err != nil {
			return res, fmt.Errorf("cluster subscribers: %w", err)
		}
		s.conns = conns
		defer closeAll(conns)
	}
	var pubLost atomic.Int64
	pubs, err := dialAll(ctx, cfg.dialA, 1, func(int) gws.Event { return baseEvent{closed: &pubLost} })
	if err != nil {
		return res, fmt.Errorf("cluster publisher: %w", err)
	}
	defer closeAll(pubs)

	err = probe(ctx, "cluster", pubs[0], cfg.size, func() string {
		if sides[0].seen.Load() < int64(sides[0].n) || sides[1].seen.Load() < int64(sides[1].n) {
			return fmt.Sprintf("only %d local and %d remote of %d subscribers", sides[0].seen.Load(), sides[1].seen.Load(), cfg.subs)
		}
		return ""
	})
	if err != nil {
		return res, err
	}

	before := make([]procSample, len(sides))
	// Messages in flight (the remote path is longer) are still counted.
	w := window{rate: cfg.rate, size: cfg.size, warmup: cfg.warmup, length: cfg.window, grace: 300 * time.Millisecond}
	for _, s := range sides {
		w.recs = append(w.recs, s.rec)
	}
	w.begin = func() error {
		for i, s := range sides {
			if s.pid > 0 {
				var err error
				if before[i], err = sampleProc(s.pid); err != nil {
					return err
				}
			}
		}
		return nil
	}
	w.end = func() {
		for _, s := range sides {
			s.rec.on.Store(false)
		}
	}
	if res.Seconds, res.Published, err = w.run(ctx, "cluster", pubs); err != nil {
		return res, err
	}
	for i, s := range sides {
		o := s.out
		o.Subscribers = s.n
		o.Delivered = s.count.Load()
		if res.Published > 0 {
			o.DeliveryRatio = float64(o.Delivered) / float64(res.Published*int64(s.n))
		}
		o.Latency = summarize(s.rec.merged())
		o.Closed = s.closed.Load()
		if s.pid > 0 {
			after, err := sampleProc(s.pid)
			if err != nil {
				return res, err
			}
			o.ServerCPUSeconds = (after.cpu - before[i].cpu).Seconds()
			o.CPUPerDeliveryUS = ratio(o.ServerCPUSeconds*1e6, float64(o.Delivered))
		}
	}
	switch {
	case res.Local.Closed > 0 || res.Remote.Closed > 0 || pubLost.Load() > 0:
		return res, fmt.Errorf("cluster: the replicas closed %d local and %d remote subscribers and %d publishers",
			res.Local.Closed, res.Remote.Closed, pubLost.Load())
	case res.Local.Delivered == 0 || res.Remote.Delivered == 0:
		return res, fmt.Errorf("cluster: %d local and %d remote deliveries in the window, want both > 0", res.Local.Delivered, res.Remote.Delivered)
	}
	return res, nil
}

// startNATS runs a NATS server in this process on a free loopback port
// (no JetStream, as wsd uses it) and returns it with its client URL.
func startNATS() (*server.Server, string, error) {
	addr, err := freePort()
	if err != nil {
		return nil, "", err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("nats: %w", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, "", fmt.Errorf("nats: %w", err)
	}
	ns, err := server.NewServer(&server.Options{Host: host, Port: p, NoLog: true, NoSigs: true})
	if err != nil {
		return nil, "", fmt.Errorf("nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, "", errors.New("nats: not ready within 10s")
	}
	return ns, "nats://" + addr, nil
}

// clusterCmd is `wsbench cluster`: it builds wsd (unless -wsd), starts an
// in-process NATS server and two wsd replicas on it (telemetry off, so
// the figures are the bus's cost), and runs one two-replica fan-out.
func clusterCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("cluster", stderr)
	cfg := clusterConfig{}
	src := fs.String("src", defaultSources, "client source addresses (range or list)")
	conc := fs.Int("dial-concurrency", 128, "parallel handshakes")
	wsdBin := fs.String("wsd", "", "prebuilt wsd binary (default: go build ./cmd/wsd)")
	logDir := fs.String("logs", "", "directory for the replicas' logs (default: a temporary one)")
	fs.IntVar(&cfg.subs, "subs", 2000, "subscribers in total, half on each replica")
	fs.Float64Var(&cfg.rate, "rate", 20, "published messages per second (on replica a)")
	fs.IntVar(&cfg.size, "size", 1024, "payload bytes")
	fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "warm-up, not measured")
	fs.DurationVar(&cfg.window, "duration", 10*time.Second, "measured window")
	if err := parse(fs, args); err != nil {
		return err
	}
	dir := *logDir
	if dir == "" {
		d, err := os.MkdirTemp("", "wsbench-cluster-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	bin := *wsdBin
	if bin == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wsbench: building wsd from %s\n", root)
		if bin, _, err = buildBinaries(ctx, root, dir); err != nil {
			return err
		}
	}
	ns, url, err := startNATS()
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	env := append([]string{"WSD_BUS__KIND=nats", "WSD_BUS__NATS__URL=" + url, "WSD_LOG__LEVEL=warn"}, noTelemetryEnv...)
	var rs [2]*runningServer
	for i, name := range []string{"wsd-a", "wsd-b"} {
		spec := serverSpec{name: name, bin: bin, args: wsdArgs(), env: env, admin: true}
		if rs[i], err = startServer(ctx, spec, "", filepath.Join(dir, name+".log")); err != nil {
			return err
		}
		defer rs[i].stop()
	}
	da, err := dialFrom(rs[0].url("/ws/topics/bench-cluster"), *src, *conc)
	if err != nil {
		return err
	}
	db, err := dialFrom(rs[1].url("/ws/topics/bench-cluster"), *src, *conc)
	if err != nil {
		return err
	}
	cfg.dialA, cfg.dialB, cfg.pidA, cfg.pidB = da, db, rs[0].pid, rs[1].pid
	r, err := runClusterFanout(ctx, cfg)
	r.NATSURL = url
	for _, s := range rs {
		if aerr := s.alive(); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	if perr := printJSON(stdout, r); perr != nil {
		return perr
	}
	return err
}
