package jaeger

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeQuery serves the recorded /api/traces answer and a services list,
// and records the last query string.
func fakeQuery(t *testing.T) (*Client, *string) {
	t.Helper()
	traces, err := os.ReadFile("testdata/traces.json")
	if err != nil {
		t.Fatal(err)
	}
	var last string
	mux := http.NewServeMux()
	mux.HandleFunc("/api/services", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"data":["jaeger","wsd"],"total":2,"limit":0,"offset":0,"errors":null}`))
	})
	mux.HandleFunc("/api/traces", func(w http.ResponseWriter, r *http.Request) {
		last = r.URL.RawQuery
		switch r.URL.Query().Get("service") {
		case "wsd":
			_, _ = w.Write(traces)
		case "none":
			_, _ = w.Write([]byte(`{"data":null,"total":0,"limit":0,"offset":0,"errors":null}`))
		default:
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"data":null,"total":0,"limit":0,"offset":0,"errors":[{"code":400,"msg":"parameter 'service' is required"}]}`))
		}
	})
	mux.HandleFunc("/html", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("<html>placeholder UI</html>"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return NewClient(srv.URL), &last
}

func TestServices(t *testing.T) {
	c, _ := fakeQuery(t)
	got, err := c.Services(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "jaeger,wsd" {
		t.Errorf("services %v, want [jaeger wsd]", got)
	}
}

func TestTracesDecodesRecordedAnswer(t *testing.T) {
	c, last := fakeQuery(t)
	before := time.Now()
	traces, err := c.Traces(context.Background(), Query{Service: "wsd", Operation: "ws.session", Limit: 5, Lookback: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	q, err := url.ParseQuery(*last)
	if err != nil {
		t.Fatal(err)
	}
	if q.Get("service") != "wsd" || q.Get("operation") != "ws.session" || q.Get("limit") != "5" {
		t.Errorf("query %q: want service=wsd operation=ws.session limit=5", *last)
	}
	start, _ := strconv.ParseInt(q.Get("start"), 10, 64)
	end, _ := strconv.ParseInt(q.Get("end"), 10, 64)
	if d := time.Duration(end-start) * time.Microsecond; d != 10*time.Minute {
		t.Errorf("query window %s, want the 10m lookback", d)
	}
	if end < before.UnixMicro() {
		t.Errorf("query end %d is before the call (%d)", end, before.UnixMicro())
	}

	if len(traces) != 1 || len(traces[0].Spans) != 1 {
		t.Fatalf("got %d traces, want 1 with 1 span: %+v", len(traces), traces)
	}
	tr := traces[0]
	sp := tr.Spans[0]
	if sp.OperationName != "ws.session" || sp.TraceID != tr.TraceID || tr.Processes[sp.ProcessID].ServiceName != "wsd" {
		t.Errorf("span %+v of trace %s: want ws.session of service wsd", sp, tr.TraceID)
	}
	code, ok := sp.Tag("ws.close.code")
	if n, err := code.Int(); !ok || err != nil || n != 999 {
		t.Errorf("ws.close.code %+v (found %v, err %v), want int 999", code, ok, err)
	}
	if ep, _ := sp.Tag("ws.endpoint"); ep.String() != "echo" {
		t.Errorf("ws.endpoint %q, want echo", ep.String())
	}
	if _, err := (KeyValue{Key: "ws.endpoint", Type: "string", Value: "echo"}).Int(); err == nil {
		t.Error("Int of a string tag: want an error")
	}
	if st, _ := sp.Tag("otel.status_code"); st.String() != "ERROR" {
		t.Errorf("otel.status_code %q, want ERROR", st.String())
	}
	if _, ok := sp.Tag("no.such.tag"); ok {
		t.Error("Tag found a tag that is not there")
	}

	recv := sp.Events("close.received")
	if len(recv) != 1 {
		t.Fatalf("close.received events %+v, want 1", recv)
	}
	if v, ok := recv[0].Field("ws.close.valid"); !ok || v.String() != "false" {
		t.Errorf("ws.close.valid %+v, want false", v)
	}
	pause := sp.Events("backpressure.pause")
	if len(pause) != 1 || pause[0].Timestamp < recv[0].Timestamp {
		t.Fatalf("backpressure.pause events %+v, want 1 after close.received", pause)
	}
	if b, _ := pause[0].Field("ws.buffered_bytes"); b.String() != "65536" {
		t.Errorf("ws.buffered_bytes %+v, want 65536", b)
	}
	if n := len(sp.Events("backpressure.resume")); n != 0 {
		t.Errorf("%d backpressure.resume events, want 0", n)
	}
}

func TestTracesEmptyAndErrors(t *testing.T) {
	c, _ := fakeQuery(t)
	ctx := context.Background()
	traces, err := c.Traces(ctx, Query{Service: "none"})
	if err != nil || len(traces) != 0 {
		t.Errorf("no traces: got %v, %v; want none and no error", traces, err)
	}
	if _, err := c.Traces(ctx, Query{}); err == nil || !strings.Contains(err.Error(), "needs a service") {
		t.Errorf("empty service: error %v, want one naming the missing service", err)
	}
	// The server's error envelope reaches the caller.
	if _, err := c.Traces(ctx, Query{Service: "other"}); err == nil || !strings.Contains(err.Error(), "parameter 'service' is required") {
		t.Errorf("API error: %v, want the server's message", err)
	}
	html := NewClient(c.QueryURL() + "/html")
	if err := html.get(ctx, "", nil, new([]string)); err == nil || !strings.Contains(err.Error(), "not the query API") {
		t.Errorf("HTML answer: %v, want a not-the-query-API error", err)
	}
	dead := NewClient("http://127.0.0.1:1")
	if _, err := dead.Services(ctx); err == nil || !strings.Contains(err.Error(), "/api/services") {
		t.Errorf("unreachable: %v, want an error naming the path", err)
	}
}
