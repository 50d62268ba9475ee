package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/wsd-dev/wsd/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// This file holds a small copy of service's test helpers (test files
// cannot be imported across packages): a server on loopback, a raw
// WebSocket client and a polling helper.

// serviceConfig is the service configuration scaled down for tests.
func serviceConfig() service.Config {
	c := service.DefaultConfig()
	c.Listen, c.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	c.Limits.UpgradeRate, c.Limits.UpgradeBurst = 100000, 100000
	c.Limits.MaxConnectionsPerIP = 100000
	c.Limits.MessageRate = 0
	c.Backpressure.WarnBytes = 64 << 10
	c.Backpressure.PauseBytes = 256 << 10
	c.Backpressure.ResumeBytes = 128 << 10
	c.Backpressure.MaxBytes = 512 << 10
	c.Heartbeat.PingInterval = 5 * time.Second
	c.Heartbeat.PongTimeout = 5 * time.Second
	c.Shutdown.DrainTimeout = 5 * time.Second
	return c
}

// fixture is a running server observed by a Telemetry whose spans go to
// a tracetest recorder, metrics to a ManualReader and logs to a buffer.
type fixture struct {
	tel    *Telemetry
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	srv    *service.Server
	logs   *syncBuffer
	stop   func() error
}

type fixtureOpts struct {
	svc  func(*service.Config)
	tel  func(*Config)
	opts []Option // replace the recorder-backed providers when set
}

func start(t testing.TB, fo fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader(), logs: &syncBuffer{}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(f.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(f.reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	tcfg := DefaultConfig()
	if fo.tel != nil {
		fo.tel(&tcfg)
	}
	opts := fo.opts
	if opts == nil {
		opts = []Option{WithTracerProvider(tp), WithMeterProvider(mp)}
	}
	tel, err := New(context.Background(), tcfg, opts...)
	if err != nil {
		t.Fatalf("telemetry.New: %v", err)
	}
	f.tel = tel
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(f.logs.String(), "\n")
			t.Logf("server log (last lines):\n%s", strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})

	scfg := serviceConfig()
	if fo.svc != nil {
		fo.svc(&scfg)
	}
	logger := slog.New(tel.LogHandler(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	sopts := []service.Option{service.WithObserver(tel), service.WithLogger(logger)}
	if h := tel.MetricsHandler(); h != nil {
		sopts = append(sopts, service.WithAdminHandler("/metrics", h))
	}
	srv, err := service.New(scfg, sopts...)
	if err != nil {
		t.Fatalf("service.New: %v", err)
	}
	if err := tel.Watch(srv); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	f.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Serve: %v", err)
	}
	var once sync.Once
	var result error
	f.stop = func() error {
		once.Do(func() { cancel(); result = <-done })
		return result
	}
	t.Cleanup(func() {
		if err := f.stop(); err != nil {
			t.Errorf("Serve returned %v", err)
		}
	})
	return f
}

func (f *fixture) wsURL(path string) string { return "ws://" + f.srv.Addr().String() + path }
func (f *fixture) adminURL(path string) string {
	return "http://" + f.srv.AdminAddr().String() + path
}

// waitIdle waits until every session has ended.
func (f *fixture) waitIdle(t testing.TB) {
	t.Helper()
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if l := f.srv.Load(); l != (service.Load{}) {
			return fmt.Errorf("not idle: %+v", l)
		}
		return nil
	})
}

// endedSpans returns the ended spans named name.
func (f *fixture) endedSpans(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range f.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// collect reads the metrics now.
func (f *fixture) collect(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := f.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	return rm
}

// findMetric returns the metric named name, or false.
func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// matches reports whether set holds every attribute of want.
func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// intValue sums the int64 sum data points of metric name whose
// attributes include want; false if the metric is absent.
func intValue(rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (int64, bool) {
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, false
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		return 0, false
	}
	var n int64
	for _, dp := range sum.DataPoints {
		if matches(dp.Attributes, want) {
			n += dp.Value
		}
	}
	return n, true
}

// histCount returns the number of recordings and their sum for the data
// points of histogram name whose attributes include want.
func histCount[N int64 | float64](rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (uint64, N) {
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, 0
	}
	h, ok := m.Data.(metricdata.Histogram[N])
	if !ok {
		return 0, 0
	}
	var count uint64
	var sum N
	for _, dp := range h.DataPoints {
		if matches(dp.Attributes, want) {
			count += dp.Count
			sum += dp.Sum
		}
	}
	return count, sum
}

// checkFor polls f every `every` until it returns nil or total elapses.
func checkFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", total, err)
		}
		time.Sleep(every)
	}
}

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ---- a raw WebSocket client ----

// rawConn is a hand-rolled client: the tests choose when it reads at
// all, and can send any close frame.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

// dial opens a TCP connection and performs the handshake with extra
// headers; rcvbuf > 0 shrinks the receive buffer (a slow reader). It
// returns the response status when the upgrade is refused.
func dial(t testing.TB, url string, rcvbuf int, header http.Header) (*rawConn, int) {
	t.Helper()
	hostPath := strings.TrimPrefix(url, "ws://")
	host, path, _ := strings.Cut(hostPath, "/")
	d := net.Dialer{Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	if rcvbuf > 0 {
		_ = nc.(*net.TCPConn).SetReadBuffer(rcvbuf)
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	req := "GET /" + path + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key) + "\r\n"
	for k, vs := range header {
		for _, v := range vs {
			req += k + ": " + v + "\r\n"
		}
	}
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, req+"\r\n"); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("handshake response: %v", err)
	}
	_ = nc.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_ = nc.Close()
	}
	return &rawConn{Conn: nc, br: br}, resp.StatusCode
}

// mustDial dials and fails the test unless the upgrade succeeds.
func mustDial(t testing.TB, url string, rcvbuf int, header http.Header) *rawConn {
	t.Helper()
	c, status := dial(t, url, rcvbuf, header)
	if status != http.StatusSwitchingProtocols {
		t.Fatalf("dial %s: status %d", url, status)
	}
	return c
}

// writeFrame writes one masked frame.
func (c *rawConn) writeFrame(opcode byte, payload []byte) error {
	hdr := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 1<<16:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := [4]byte{1, 2, 3, 4}
	hdr = append(hdr, mask[:]...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	_, err := c.Write(append(hdr, masked...))
	return err
}

func (c *rawConn) writeClose(code uint16, reason string) error {
	return c.writeFrame(0x8, append(binary.BigEndian.AppendUint16(nil, code), reason...))
}

// readFrame reads one server frame: opcode and payload.
func (c *rawConn) readFrame(timeout time.Duration) (byte, []byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, p, nil
}

// echo sends payload and reads the echo back, skipping control frames.
func (c *rawConn) echo(payload []byte) error {
	if err := c.writeFrame(0x2, payload); err != nil {
		return err
	}
	for {
		op, p, err := c.readFrame(10 * time.Second)
		if err != nil {
			return err
		}
		if op == 0x2 {
			if !bytes.Equal(p, payload) {
				return errors.New("echo differs")
			}
			return nil
		}
	}
}

// closeNormally sends 1000 and waits for the server's close frame.
func (c *rawConn) closeNormally() error {
	if err := c.writeClose(1000, "bye"); err != nil {
		return err
	}
	for {
		op, _, err := c.readFrame(10 * time.Second)
		if err != nil {
			return err
		}
		if op == 0x8 {
			return nil
		}
	}
}
