package chaos

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/wsd-dev/wsd/service"
)

// Prometheus names of the wsd metrics the checker cross-checks against
// /debug/stats (the OTel names with dots as underscores, units and
// _total appended by the Prometheus exporter).
const (
	metricActive    = "wsd_connections_active"
	metricPaused    = "wsd_connections_paused"
	metricBuffered  = "wsd_send_buffer_usage_bytes"
	metricOpened    = "wsd_connections_opened_total"
	metricClosed    = "wsd_connections_closed_total"
	metricEvicted   = "wsd_slow_consumers_evicted_total"
	metricDropped   = "wsd_messages_dropped_total"
	metricHeartbeat = "wsd_heartbeat_timeouts_total"
)

// CheckMetrics reads /metrics and /debug/stats once the scenario is over
// and returns the invariants tying them together: the live gauges read
// what /debug/stats reads (zero after a quiet period), opened − closed
// equals the open connections, the eviction, drop and heartbeat counters
// equal the /debug/stats totals, the close-code label only takes values
// from wsd's bounded set (never a raw code a client sent), and no label
// carries one of clientValues (topic names a scenario chose, client
// addresses). found is
// false when the server does not serve /metrics.
func (c *Checker) CheckMetrics(ctx context.Context, clientValues []string) (inv []Invariant, found bool) {
	samples, _, found, err := c.admin.Metrics(ctx)
	if err != nil {
		return []Invariant{{Name: "/metrics answers", Want: "HTTP 200", Got: err.Error()}}, true
	}
	if !found {
		return nil, false
	}
	st, err := c.admin.Stats(ctx)
	if err != nil {
		return []Invariant{{Name: "/debug/stats answers", Want: "HTTP 200", Got: err.Error()}}, true
	}
	eq := func(name string, metric, stats float64) Invariant {
		return Invariant{Name: name, Want: fmt.Sprintf("= %g (/debug/stats)", stats), Got: fmt.Sprintf("%g", metric), Pass: metric == stats}
	}
	inv = append(inv,
		eq("/metrics "+metricActive+" matches connections", sumMetric(samples, metricActive), float64(st.Connections)),
		eq("/metrics "+metricPaused+" matches paused", sumMetric(samples, metricPaused), float64(st.Paused)),
		eq("/metrics "+metricBuffered+" matches buffered_bytes", sumMetric(samples, metricBuffered), float64(st.BufferedBytes)),
		eq("/metrics opened − closed matches connections", sumMetric(samples, metricOpened)-sumMetric(samples, metricClosed), float64(st.Connections)),
		eq("/metrics "+metricEvicted+" matches evicted_total", sumMetric(samples, metricEvicted), float64(st.EvictedTotal)),
		eq("/metrics "+metricDropped+" matches dropped_total", sumMetric(samples, metricDropped), float64(st.DroppedTotal)),
		eq("/metrics "+metricHeartbeat+" matches heartbeat_timeouts_total", sumMetric(samples, metricHeartbeat), float64(st.HeartbeatTimeoutsTotal)),
	)
	var bad []string
	allowed := closeCodeLabels()
	for _, v := range labelValues(samples, metricClosed, "ws_close_code") {
		if !allowed[v] {
			bad = append(bad, v)
		}
	}
	inv = append(inv, Invariant{Name: "/metrics close-code label bounded", Want: "only wsd's close-code labels (known codes, private, invalid)",
		Got: fmt.Sprintf("%d unexpected %v; seen %v", len(bad), bad, labelValues(samples, metricClosed, "ws_close_code")), Pass: len(bad) == 0})
	var leaked []string
	values := allLabelValues(samples)
	for _, v := range clientValues {
		for _, lv := range values {
			if v != "" && strings.Contains(lv, v) {
				leaked = append(leaked, v)
				break
			}
		}
	}
	inv = append(inv, Invariant{Name: "/metrics carries no client-chosen label value", Want: fmt.Sprintf("none of %q", clientValues),
		Got: fmt.Sprintf("%d found %v", len(leaked), leaked), Pass: len(leaked) == 0})
	return inv, true
}

// sumMetric adds every series of name (any labels); an absent metric (a
// counter never incremented) sums to 0.
func sumMetric(samples map[string]float64, name string) float64 { return SumMetric(samples, name) }

// SumMetric adds the series of name (as returned by Admin.Metrics) that
// carry every label given as `key="value"`; an absent metric sums to 0.
func SumMetric(samples map[string]float64, name string, labels ...string) float64 {
	total := 0.0
	for k, v := range samples {
		if (k != name && !strings.HasPrefix(k, name+"{")) || math.IsNaN(v) {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(k, l)
		}
		if match {
			total += v
		}
	}
	return total
}

var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// labelValues returns the sorted distinct values of label on name.
func labelValues(samples map[string]float64, name, label string) []string {
	set := map[string]bool{}
	for k := range samples {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, m := range labelRE.FindAllStringSubmatch(k, -1) {
			if m[1] == label {
				set[m[2]] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// allLabelValues returns every label value of every series.
func allLabelValues(samples map[string]float64) []string {
	set := map[string]bool{}
	for k := range samples {
		for _, m := range labelRE.FindAllStringSubmatch(k, -1) {
			set[m[2]] = true
		}
	}
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	return out
}

var (
	closeLabelsOnce sync.Once
	closeLabels     map[string]bool
)

// closeCodeLabels is every value service.CloseCodeLabel can return.
func closeCodeLabels() map[string]bool {
	closeLabelsOnce.Do(func() {
		closeLabels = map[string]bool{}
		for c := 0; c <= math.MaxUint16; c++ {
			closeLabels[service.CloseCodeLabel(uint16(c))] = true
		}
	})
	return closeLabels
}
