package jaeger

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Client reads Jaeger's HTTP query API (/api/services, /api/traces), the
// JSON API the Jaeger UI uses; it works on any Jaeger v1 or v2 query
// service, not only on a Container. The zero value is not usable: create
// it with NewClient.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a Client for the query service at base
// ("http://127.0.0.1:16686"). Each request times out after 10s.
func NewClient(base string) *Client {
	return &Client{base: base, http: &http.Client{Timeout: 10 * time.Second}}
}

// QueryURL returns the base URL of the query service (UI and /api).
func (c *Client) QueryURL() string { return c.base }

// Services lists the service names Jaeger has received spans from. It
// fails when the API is unreachable or answers with an error.
func (c *Client) Services(ctx context.Context) ([]string, error) {
	var out []string
	if err := c.get(ctx, "/api/services", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Query selects traces. Service is required.
type Query struct {
	// Service is the service.name resource attribute ("wsd").
	Service string
	// Operation keeps traces with a span of this name ("ws.session");
	// empty: any.
	Operation string
	// Limit is the most traces returned; 0 means 1000.
	Limit int
	// Lookback is how far back to search; 0 means one hour.
	Lookback time.Duration
}

// Traces returns the traces matching q, newest first as Jaeger orders
// them. It fails when Service is empty, the API is unreachable or answers
// with an error.
func (c *Client) Traces(ctx context.Context, q Query) ([]Trace, error) {
	if q.Service == "" {
		return nil, fmt.Errorf("jaeger: traces query needs a service")
	}
	limit, lookback := q.Limit, q.Lookback
	if limit <= 0 {
		limit = 1000
	}
	if lookback <= 0 {
		lookback = time.Hour
	}
	end := time.Now()
	v := url.Values{
		"service": {q.Service},
		"limit":   {strconv.Itoa(limit)},
		"start":   {strconv.FormatInt(end.Add(-lookback).UnixMicro(), 10)},
		"end":     {strconv.FormatInt(end.UnixMicro(), 10)},
	}
	if q.Operation != "" {
		v.Set("operation", q.Operation)
	}
	var out []Trace
	if err := c.get(ctx, "/api/traces", v, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// get decodes the data field of Jaeger's response envelope into out.
func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("jaeger: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("jaeger: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("jaeger: GET %s: read body: %w", path, err)
	}
	var env struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("jaeger: GET %s: %s: not the query API's JSON: %w (body starts %q)", path, resp.Status, err, truncate(body, 200))
	}
	if resp.StatusCode != http.StatusOK || len(env.Errors) > 0 {
		return fmt.Errorf("jaeger: GET %s: %s: %+v", path, resp.Status, env.Errors)
	}
	if len(env.Data) == 0 || bytes.Equal(env.Data, []byte("null")) {
		return nil // no services or traces yet
	}
	dec := json.NewDecoder(bytes.NewReader(env.Data))
	dec.UseNumber() // int64 tag values must not round through float64
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("jaeger: GET %s: decode data: %w", path, err)
	}
	return nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// Trace is one trace as the query API returns it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
}

// Process is the resource a span came from.
type Process struct {
	ServiceName string     `json:"serviceName"`
	Tags        []KeyValue `json:"tags"`
}

// Span is one span. OTLP span attributes are Tags; OTLP span events are
// Logs whose "event" field is the event name.
type Span struct {
	TraceID       string     `json:"traceID"`
	SpanID        string     `json:"spanID"`
	OperationName string     `json:"operationName"`
	StartTime     int64      `json:"startTime"` // µs since the Unix epoch
	Duration      int64      `json:"duration"`  // µs
	Tags          []KeyValue `json:"tags"`
	Logs          []Log      `json:"logs"`
	ProcessID     string     `json:"processID"`
}

// Log is a span event.
type Log struct {
	Timestamp int64      `json:"timestamp"` // µs since the Unix epoch
	Fields    []KeyValue `json:"fields"`
}

// KeyValue is a tag or log field. Type is string, bool, int64, float64
// or binary; Value is a string, a bool or a json.Number.
type KeyValue struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Tag returns the span tag key.
func (s Span) Tag(key string) (KeyValue, bool) { return find(s.Tags, key) }

// Events returns the span's events (logs) named name, in order.
func (s Span) Events(name string) []Log {
	var out []Log
	for _, l := range s.Logs {
		if l.Name() == name {
			out = append(out, l)
		}
	}
	return out
}

// Name returns the event name (the "event" field), or "".
func (l Log) Name() string {
	kv, ok := find(l.Fields, "event")
	if !ok {
		return ""
	}
	s, _ := kv.Value.(string)
	return s
}

// Field returns the log field key.
func (l Log) Field(key string) (KeyValue, bool) { return find(l.Fields, key) }

// Int returns an int64 value. It fails for any other type.
func (kv KeyValue) Int() (int64, error) {
	n, ok := kv.Value.(json.Number)
	if kv.Type != "int64" || !ok {
		return 0, fmt.Errorf("jaeger: %s is %s %v, not int64", kv.Key, kv.Type, kv.Value)
	}
	return n.Int64()
}

// String returns the value as text, whatever its type.
func (kv KeyValue) String() string { return fmt.Sprint(kv.Value) }

func find(kvs []KeyValue, key string) (KeyValue, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv, true
		}
	}
	return KeyValue{}, false
}
