package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
)

// otlpSink is a loopback OTLP/HTTP receiver that accepts and discards
// every export, so that "telemetry on" includes exporting spans (as in
// production, where a collector receives them) without a collector
// container competing for the benchmark's CPU.
type otlpSink struct {
	srv      *http.Server
	addr     string
	requests atomic.Int64
	bytes    atomic.Int64
}

func startOTLPSink() (*otlpSink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("otlp sink: %w", err)
	}
	s := &otlpSink{addr: l.Addr().String()}
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		s.requests.Add(1)
		s.bytes.Add(n)
		// An empty protobuf Export*ServiceResponse: full success.
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// env points wsd's trace exporter at the sink.
func (s *otlpSink) env() []string {
	return []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://" + s.addr + "/v1/traces",
	}
}

func (s *otlpSink) close() { _ = s.srv.Close() }
