package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func target(v float64, atLeast bool, bound float64) (string, *bool) {
	met := v <= bound
	t := fmt.Sprintf("<= %.2f", bound)
	if atLeast {
		met, t = v >= bound, fmt.Sprintf(">= %.2f", bound)
	}
	return t, &met
}

const mib = 1 << 20

// ratios derives the headline figures from the raw results.
func ratios(r *Results) []Ratio {
	var out []Ratio
	add := func(name string, v float64, tgt string, met *bool, base, subj string) {
		out = append(out, Ratio{Name: name, Value: v, Target: tgt, Met: met, Baseline: base, Subject: subj})
	}
	cb, cw := r.ClosedLoop[nameBaseline], r.ClosedLoop[nameWSD]
	thr := func(e EchoResult) float64 { return e.Throughput }
	cpu := func(e EchoResult) float64 { return e.ServerCPUPerMsg }
	v := pairedRatio(r.ClosedLoopRounds, nameWSD, nameBaseline, thr, cw, cb)
	t, m := target(v, true, 0.90)
	add("1. closed-loop echo throughput (msgs/s)", v, t, m,
		fmt.Sprintf("%.0f msgs/s (p99 %s, server CPU %.2f)", cb.Throughput, us(cb.Latency.P99), cb.ServerUtil),
		fmt.Sprintf("%.0f msgs/s (p99 %s, server CPU %.2f)", cw.Throughput, us(cw.Latency.P99), cw.ServerUtil))

	ob, ow := r.OpenLoop[nameBaseline], r.OpenLoop[nameWSD]
	sb, sw := medianRound(r.SameTimeRounds[nameBaseline], cpu), medianRound(r.SameTimeRounds[nameWSD], cpu)
	v = pairedRatio(r.SameTimeRounds, nameWSD, nameBaseline, cpu, sw, sb)
	t, m = target(v, false, 1.10)
	add(fmt.Sprintf("2. server CPU per echoed message, servers driven at the same time, %.0f msgs/s each", sb.OfferedRate), v, t, m,
		fmt.Sprintf("%.2f µs/msg", sb.ServerCPUPerMsg), fmt.Sprintf("%.2f µs/msg", sw.ServerCPUPerMsg))
	add(fmt.Sprintf("2. (one server at a time, %.0f msgs/s)", ob.OfferedRate), pairedRatio(r.OpenLoopRounds, nameWSD, nameBaseline, cpu, ow, ob), "", nil,
		fmt.Sprintf("%.2f µs/msg (p99 %s)", ob.ServerCPUPerMsg, us(ob.Latency.P99)),
		fmt.Sprintf("%.2f µs/msg (p99 %s)", ow.ServerCPUPerMsg, us(ow.Latency.P99)))

	ib, iw := r.Idle[nameBaseline], r.Idle[nameWSD]
	for i := range min(len(ib.Steps), len(iw.Steps)) {
		sb, sw := ib.Steps[i], iw.Steps[i]
		v = ratio(sw.PerConn, sb.PerConn)
		t, m = target(v, false, 1.15)
		add(fmt.Sprintf("3. extra RSS per idle connection at %d connections", sb.Conns), v, t, m,
			fmt.Sprintf("%.1f KiB/conn (RSS %.0f MiB)", sb.PerConn/1024, float64(sb.RSS)/mib),
			fmt.Sprintf("%.1f KiB/conn (RSS %.0f MiB)", sw.PerConn/1024, float64(sw.RSS)/mib))
	}

	fb, fw := r.Fanout[nameBaseline], r.Fanout[nameWSD]
	add(fmt.Sprintf("4. fan-out p50 delivery latency, %d subscribers, %.0f msgs/s", fb.Subscribers, fb.Rate),
		ratio(fw.Latency.P50, fb.Latency.P50), "", nil, us(fb.Latency.P50), us(fw.Latency.P50))
	add(fmt.Sprintf("4. fan-out p99 delivery latency, %d subscribers, %.0f msgs/s", fb.Subscribers, fb.Rate),
		ratio(fw.Latency.P99, fb.Latency.P99), "", nil, us(fb.Latency.P99), us(fw.Latency.P99))
	perDelivery := func(f FanoutResult) float64 { return ratio(f.ServerCPUSeconds*1e6, float64(f.Delivered)) }
	add("4. fan-out server CPU per delivered message", ratio(perDelivery(fw), perDelivery(fb)), "", nil,
		fmt.Sprintf("%.2f µs (%.2f s for %d)", perDelivery(fb), fb.ServerCPUSeconds, fb.Delivered),
		fmt.Sprintf("%.2f µs (%.2f s for %d)", perDelivery(fw), fw.ServerCPUSeconds, fw.Delivered))

	for _, name := range []string{nameWSD, nameBaseline} {
		none, slow := r.Isolation[name], r.Isolation[name+"+slow"]
		add(fmt.Sprintf("5. %s: fast subscribers' p99 with %d%% slow / with none", name, pct(slow.Slow, slow.Subscribers)),
			ratio(slow.Latency.P99, none.Latency.P99), "", nil,
			fmt.Sprintf("none: p99 %s, RSS max %.0f MiB", us(none.Latency.P99), float64(none.ServerRSSMax)/mib),
			fmt.Sprintf("slow: p99 %s, RSS max %.0f MiB", us(slow.Latency.P99), float64(slow.ServerRSSMax)/mib))
	}
	bs, ws := r.Isolation[nameBaseline+"+slow"], r.Isolation[nameWSD+"+slow"]
	add("5. server RSS growth during the slow-subscriber run, wsd / baseline",
		ratio(float64(ws.ServerRSSEnd-ws.ServerRSSStart), float64(bs.ServerRSSEnd-bs.ServerRSSStart)), "", nil,
		fmt.Sprintf("%+.0f MiB", float64(bs.ServerRSSEnd-bs.ServerRSSStart)/mib),
		fmt.Sprintf("%+.0f MiB (slow consumers closed: %d evicted with 1013, %d by write_timeout)", float64(ws.ServerRSSEnd-ws.ServerRSSStart)/mib, r.WSDEvicted, r.WSDWriteTimeouts))

	cn, on := r.ClosedLoop[nameNoTel], r.OpenLoop[nameNoTel]
	add("6. telemetry on / off: closed-loop throughput", pairedRatio(r.ClosedLoopRounds, nameWSD, nameNoTel, thr, cw, cn), "", nil,
		fmt.Sprintf("off: %.0f msgs/s", cn.Throughput), fmt.Sprintf("on: %.0f msgs/s", cw.Throughput))
	sn := medianRound(r.SameTimeRounds[nameNoTel], cpu)
	add("6. telemetry on / off: CPU per echoed message, servers driven at the same time", pairedRatio(r.SameTimeRounds, nameWSD, nameNoTel, cpu, sw, sn), "", nil,
		fmt.Sprintf("off: %.2f µs/msg", sn.ServerCPUPerMsg), fmt.Sprintf("on: %.2f µs/msg", sw.ServerCPUPerMsg))
	add("6. (one server at a time)", pairedRatio(r.OpenLoopRounds, nameWSD, nameNoTel, cpu, ow, on), "", nil,
		fmt.Sprintf("off: %.2f µs/msg", on.ServerCPUPerMsg), fmt.Sprintf("on: %.2f µs/msg", ow.ServerCPUPerMsg))
	return out
}

// medianRound is the median of rounds by key; the zero result without
// rounds (a results.json from before the measurement existed).
func medianRound(rounds []EchoResult, key func(EchoResult) float64) EchoResult {
	if len(rounds) == 0 {
		return EchoResult{}
	}
	return median(rounds, key)
}

// pairedRatio is the median over rounds of key(a)/key(b) within the same
// round: the two runs of a round are minutes apart at most, so a burst
// of load from elsewhere on the machine skews one round, not the figure.
// Without rounds it is the ratio of the given results.
func pairedRatio(rounds map[string][]EchoResult, a, b string, key func(EchoResult) float64, ea, eb EchoResult) float64 {
	ra, rb := rounds[a], rounds[b]
	if len(ra) == 0 || len(ra) != len(rb) {
		return ratio(key(ea), key(eb))
	}
	rs := make([]float64, len(ra))
	for i := range ra {
		rs[i] = ratio(key(ra[i]), key(rb[i]))
	}
	return median(rs, func(v float64) float64 { return v })
}

func pct(a, b int) int {
	if b == 0 {
		return 0
	}
	return 100 * a / b
}

func us(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f s", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.2f ms", v/1e3)
	default:
		return fmt.Sprintf("%.0f µs", v)
	}
}

// writeResults writes results.json and results.md into dir.
func writeResults(dir string, r *Results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(markdown(r)), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// markdown renders the results table and the details behind it.
func markdown(r *Results) string {
	var b strings.Builder
	kind := "full suite"
	if r.Smoke {
		kind = "SMOKE run (tiny sizes: checks the harness, the figures mean nothing)"
	}
	fmt.Fprintf(&b, "# wsd benchmark results\n\n%s, %s, commit `%s`, %.0f s.\n\n", kind, r.Date, r.Commit, r.Duration)
	fmt.Fprintf(&b, "Machine: %s, %d cores, %d GiB, Linux %s, %s; load average at start %s. %s. RLIMIT_NOFILE %d.\n\n",
		r.Machine.CPU, r.Machine.Cores, r.Machine.MemoryGiB, r.Machine.Kernel, r.Machine.Go, r.Machine.LoadAvg, r.Pinning, r.NoFile)
	b.WriteString("| measurement | ratio (wsd / baseline) | target | met | baseline | wsd |\n|---|---|---|---|---|---|\n")
	for _, x := range r.Ratios {
		met := ""
		if x.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*x.Met]
		}
		fmt.Fprintf(&b, "| %s | %.3f | %s | %s | %s | %s |\n", x.Name, x.Value, x.Target, met, x.Baseline, x.Subject)
	}
	fmt.Fprintf(&b, "\nRows 1, 2 and 6 are the median over %d rounds of the ratio within each round (servers alternate inside a round); their absolute values are the median rounds. ", r.Params.Rounds)
	fmt.Fprintf(&b, "Rows 5 compare a server with itself (slow subscribers present / none; RSS: wsd / baseline). Rows 6 compare wsd with telemetry on (Prometheus /metrics scraped every %gs: %d scrapes; session spans exported over OTLP/HTTP to a loopback sink: %d exports, %d bytes) and off (`%s`).\n\n",
		r.Params.MetricsScrapeEveryS, r.MetricsScrapes, r.OTLPRequests, r.OTLPBytes, strings.Join(r.NoTelemetryEnv, " "))

	b.WriteString("## Latency (µs)\n\n| run | server | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|---|\n")
	lat := func(run, name string, l Latency) {
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f |\n", run, name, l.Count, l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	for _, name := range sortedKeys(r.ClosedLoop) {
		lat("closed-loop echo (round trip)", name, r.ClosedLoop[name].Latency)
	}
	for _, name := range sortedKeys(r.OpenLoop) {
		lat(fmt.Sprintf("open-loop echo %.0f/s (round trip)", r.OpenLoop[name].OfferedRate), name, r.OpenLoop[name].Latency)
	}
	for _, name := range sortedKeys(r.Fanout) {
		lat("fan-out (publish to delivery)", name, r.Fanout[name].Latency)
	}
	for _, name := range sortedKeys(r.Isolation) {
		lat("isolation, fast subscribers", name, r.Isolation[name].Latency)
	}

	b.WriteString("\n## Throughput and CPU\n\n| run | server | msgs/s | server CPU (cores) | CPU µs/msg | server RSS MiB |\n|---|---|---|---|---|---|\n")
	for _, set := range []struct {
		run string
		m   map[string]EchoResult
	}{{"closed-loop echo", r.ClosedLoop}, {"open-loop echo", r.OpenLoop}} {
		for _, name := range sortedKeys(set.m) {
			e := set.m[name]
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.2f | %.2f | %.0f |\n", set.run, name, e.Throughput, e.ServerUtil, e.ServerCPUPerMsg, float64(e.ServerRSS)/mib)
		}
	}

	if len(r.ClosedLoopRounds) > 0 {
		b.WriteString("\nEvery round (servers alternate within a round; the tables above show the median round; the last column drives the three servers at the same time):\n\n| server | closed-loop msgs/s per round | open-loop CPU µs/msg per round | same time: CPU µs/msg per round |\n|---|---|---|---|\n")
		for _, name := range sortedKeys(r.ClosedLoopRounds) {
			var tp, cpu, same []string
			for _, e := range r.ClosedLoopRounds[name] {
				tp = append(tp, fmt.Sprintf("%.0f", e.Throughput))
			}
			for _, e := range r.OpenLoopRounds[name] {
				cpu = append(cpu, fmt.Sprintf("%.2f", e.ServerCPUPerMsg))
			}
			for _, e := range r.SameTimeRounds[name] {
				same = append(same, fmt.Sprintf("%.2f", e.ServerCPUPerMsg))
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, strings.Join(tp, ", "), strings.Join(cpu, ", "), strings.Join(same, ", "))
		}
	}

	b.WriteString("\n## Memory per idle connection\n\n")
	if r.Params.IdleHoldS > 0 {
		fmt.Fprintf(&b, "Each step (cumulative) is held %.0fs before RSS is read: by then wsd has pinged every connection of the step at least once (its first ping comes 12.5-25s after the connection opens), so the figures include what wsd's heartbeat costs an idle connection.\n\n", r.Params.IdleHoldS)
	}
	b.WriteString("| server | connections | RSS MiB | extra KiB per connection | goroutine stacks KiB per connection | Go heap in use KiB per connection |\n|---|---|---|---|---|---|\n")
	for _, name := range sortedKeys(r.Idle) {
		i := r.Idle[name]
		fmt.Fprintf(&b, "| %s | 0 | %.1f | | | |\n", name, float64(i.RSS0)/mib)
		for _, s := range i.Steps {
			stack, heap := "n/a", "n/a"
			if s.StackInuse > 0 {
				stack = fmt.Sprintf("%.2f", float64(s.StackInuse)/float64(s.Conns)/1024)
				heap = fmt.Sprintf("%.2f", float64(s.HeapInuse)/float64(s.Conns)/1024)
			}
			fmt.Fprintf(&b, "| %s | %d | %.1f | %.2f | %s | %s |\n", name, s.Conns, float64(s.RSS)/mib, s.PerConn/1024, stack, heap)
		}
	}

	b.WriteString("\n## Fan-out and isolation\n\n| run | subscribers (slow) | rate/s | payload B | delivered | delivery ratio | server CPU s | RSS start → max MiB |\n|---|---|---|---|---|---|---|---|\n")
	fan := func(run string, f FanoutResult) {
		fmt.Fprintf(&b, "| %s | %d (%d) | %.0f | %d | %d | %.3f | %.2f | %.0f → %.0f |\n", run, f.Subscribers, f.Slow, f.Rate, f.PayloadSize,
			f.Delivered, f.DeliveryRatio, f.ServerCPUSeconds, float64(f.ServerRSSStart)/mib, float64(f.ServerRSSMax)/mib)
	}
	for _, name := range sortedKeys(r.Fanout) {
		fan("fan-out "+name, r.Fanout[name])
	}
	for _, name := range sortedKeys(r.Isolation) {
		fan("isolation "+name, r.Isolation[name])
	}
	fmt.Fprintf(&b, "\nDuring the isolation runs wsd closed %d slow consumers: %d evicted at max_bytes (close 1013), %d by the write watchdog (write_timeout, no progress); the baseline has no such protection.\n", r.WSDEvicted+r.WSDWriteTimeouts, r.WSDEvicted, r.WSDWriteTimeouts)

	b.WriteString("\n## Configuration\n\nwsd: `" + strings.Join(r.WSDArgs, " ") + "` — every protection on (heartbeat, backpressure, message shaping, descriptor guard, admission); the caps are sized for the load. Baseline: `bench/baseline`, gws with default options.\n")
	fmt.Fprintf(&b, "\nParams: `%+v`.\n", r.Params)
	if len(r.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
