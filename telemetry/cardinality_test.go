package telemetry

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// closeLabels is the bounded set a ws.close.code attribute may take
// (README, Metrics): written out here, not derived from
// service.CloseCodeLabel, so that a label function that leaks raw codes
// fails the check.
var closeLabels = func() map[string]bool {
	m := map[string]bool{"4000": true, "4001": true, "private": true, "invalid": true}
	for c := 1000; c <= 1014; c++ {
		if c != 1004 {
			m[strconv.Itoa(c)] = true
		}
	}
	return m
}()

// checkCardinality fails t when a metric in rm carries a ws.close.code
// outside closeLabels, or any attribute whose value is one of the raw
// codes a client sent (raw), which would make the series unbounded.
func checkCardinality(t *testing.T, rm metricdata.ResourceMetrics, raw []uint16) {
	t.Helper()
	rawText := map[string]bool{}
	for _, c := range raw {
		if !closeLabels[strconv.Itoa(int(c))] {
			rawText[strconv.Itoa(int(c))] = true
		}
	}
	check := func(metric string, set attribute.Set) {
		for _, kv := range set.ToSlice() {
			v := kv.Value.Emit()
			if kv.Key == keyCloseCode && !closeLabels[v] {
				t.Errorf("%s: ws.close.code=%q is not a bounded label (CloseCodeLabel)", metric, v)
			}
			if rawText[v] {
				t.Errorf("%s: attribute %s=%q is a raw client close code", metric, kv.Key, v)
			}
		}
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					check(m.Name, p.Attributes)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					check(m.Name, p.Attributes)
				}
			case metricdata.Histogram[int64]:
				for _, p := range d.DataPoints {
					check(m.Name, p.Attributes)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					check(m.Name, p.Attributes)
				}
			}
		}
	}
}

// TestCloseCodeCardinality: clients close with private codes (valid
// 3000–4999) and invalid ones; every metric, in the SDK and on /metrics,
// carries only the bounded labels ("private", "invalid"), never the raw
// codes, whatever wsd answered.
func TestCloseCodeCardinality(t *testing.T) {
	f := start(t, fixtureOpts{})
	raw := []uint16{3001, 4321, 4999, 0, 999, 1004, 1016, 2999, 5000, 65535}
	for _, code := range raw {
		c := wstest.MustDialRaw(t, f.wsURL("/ws/echo"))
		if err := c.WriteClose(code, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadUntilClose(10 * time.Second); err != nil {
			t.Fatalf("close %d: no answer: %v", code, err)
		}
		c.Close()
	}
	f.waitIdle(t)
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(f.endedSpans(spanSession)); n != len(raw) {
			return fmt.Errorf("%d sessions ended, want %d", n, len(raw))
		}
		return nil
	})
	rm := f.collect(t)
	checkCardinality(t, rm, raw)
	// Both bounded labels were used: the check above saw the codes.
	for _, label := range []string{"private", "invalid"} {
		if v, ok := intValue(rm, "wsd.connections.closed", keyCloseCode.String(label)); !ok || v == 0 {
			t.Errorf("wsd.connections.closed{ws.close.code=%q} = %d (present %v), want > 0", label, v, ok)
		}
	}
	resp, err := http.Get(f.adminURL("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, code := range raw {
		if s := strconv.Itoa(int(code)); !closeLabels[s] && strings.Contains(string(body), `"`+s+`"`) {
			t.Errorf("/metrics carries the raw client close code %q as a label value", s)
		}
	}
}
