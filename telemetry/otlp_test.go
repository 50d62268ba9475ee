package telemetry

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// fakeCollector is an OTLP/HTTP trace receiver on loopback.
type fakeCollector struct {
	mu      sync.Mutex
	service []string
	spans   []*tracepb.Span
}

func (c *fakeCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				c.service = append(c.service, kv.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.ScopeSpans {
			c.spans = append(c.spans, ss.Spans...)
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(b)
}

// TestOTLPHTTPTraceExport: with only OTEL_EXPORTER_OTLP_ENDPOINT set (the
// Jaeger setup), ws.session spans reach an OTLP/HTTP collector within
// seconds — the batch delay, not Shutdown, sends them — with
// service.name wsd, kind server and the session attributes.
func TestOTLPHTTPTraceExport(t *testing.T) {
	col := &fakeCollector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	for _, k := range []string{envTracesExporter, envMetricsExporter, envLogsExporter, envOTLPTraces, envServiceName, "OTEL_RESOURCE_ATTRIBUTES"} {
		t.Setenv(k, "")
	}
	t.Setenv(envOTLPEndpoint, srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	f := start(t, fixtureOpts{opts: []Option{}})
	if f.tel.String() != "traces=otlp metrics=prometheus logs=none" {
		t.Fatalf("exporters %s", f.tel)
	}
	if err := echoSession(f.wsURL("/ws/topics/alerts"), nil, nil, 0, nil); err != nil {
		t.Fatal(err)
	}
	wstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		col.mu.Lock()
		defer col.mu.Unlock()
		for _, s := range col.spans {
			if s.Name != spanSession {
				continue
			}
			got := map[string]string{}
			for _, kv := range s.Attributes {
				got[kv.Key] = fmt.Sprint(kv.GetValue().GetStringValue(), kv.GetValue().GetIntValue())
			}
			if s.Kind != tracepb.Span_SPAN_KIND_SERVER || got["ws.endpoint"] != "topic0" || got["ws.topic"] != "alerts0" ||
				got["ws.close.code"] != "1000" || len(col.service) == 0 || col.service[0] != "wsd" {
				return fmt.Errorf("span %v attributes %v service %v", s.Kind, got, col.service)
			}
			return nil
		}
		return fmt.Errorf("no ws.session span among %d received", len(col.spans))
	})
}
