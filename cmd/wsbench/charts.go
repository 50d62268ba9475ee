package main

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var seriesColors = map[string]color.Color{
	nameBaseline:           color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff},
	nameWSD:                color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	nameNoTel:              color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	nameBaseline + "+slow": color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	nameWSD + "+slow":      color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
}

type series struct {
	name string
	pts  []Point
}

// writeCharts renders the PNG charts into dir and returns their names.
func writeCharts(dir string, r *Results) ([]string, error) {
	var files []string
	save := func(file string, p *plot.Plot) error {
		if err := p.Save(8*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, file)); err != nil {
			return fmt.Errorf("chart %s: %w", file, err)
		}
		files = append(files, file)
		return nil
	}
	latency := []struct {
		file, title string
		runs        map[string]Latency
	}{
		{"latency_closed_loop.png", fmt.Sprintf("Closed-loop echo round trip (%d conns × %d in flight, 1 KiB)", r.Params.ClosedConns, r.Params.ClosedInFlight), echoLat(r.ClosedLoop)},
		{"latency_open_loop.png", fmt.Sprintf("Open-loop echo round trip at %.0f msgs/s", r.OpenLoop[nameBaseline].OfferedRate), echoLat(r.OpenLoop)},
		{"latency_fanout.png", fmt.Sprintf("Fan-out delivery latency (%d subscribers, %.0f msgs/s)", r.Params.FanoutSubs, r.Params.FanoutRate), fanLat(r.Fanout)},
		{"latency_isolation.png", fmt.Sprintf("Fast subscribers' latency, %d%% slow subscribers vs none", pct(r.Params.IsolationSlow, r.Params.IsolationSubs)), fanLat(r.Isolation)},
	}
	for _, l := range latency {
		var ss []series
		for _, name := range sortedKeys(l.runs) {
			ss = append(ss, series{name, nines(l.runs[name].Curve)})
		}
		p, err := lineChart(l.title, "percentile", "latency (µs, log scale)", ss, true)
		if err != nil {
			return files, err
		}
		p.X.Tick.Marker = plot.ConstantTicks(ninesTicks())
		p.X.Min, p.X.Max = 0, 5.3 // room for the last tick label
		if err := save(l.file, p); err != nil {
			return files, err
		}
	}

	var mem []series
	for _, name := range sortedKeys(r.Idle) {
		i := r.Idle[name]
		pts := []Point{{0, float64(i.RSS0) / mib}}
		for _, s := range i.Steps {
			pts = append(pts, Point{float64(s.Conns), float64(s.RSS) / mib})
		}
		mem = append(mem, series{name, pts})
	}
	p, err := lineChart("Server RSS vs idle connections", "idle connections", "RSS (MiB)", mem, false)
	if err != nil {
		return files, err
	}
	if err := save("memory_idle.png", p); err != nil {
		return files, err
	}

	var iso []series
	for _, name := range sortedKeys(r.Isolation) {
		iso = append(iso, series{name, r.Isolation[name].RSSSeries})
	}
	p, err = lineChart("Server RSS during the isolation runs (slow subscribers stop reading)", "seconds since publishing began", "RSS (MiB)", iso, false)
	if err != nil {
		return files, err
	}
	return files, save("memory_isolation.png", p)
}

func echoLat(m map[string]EchoResult) map[string]Latency {
	out := map[string]Latency{}
	for k, v := range m {
		out[k] = v.Latency
	}
	return out
}

func fanLat(m map[string]FanoutResult) map[string]Latency {
	out := map[string]Latency{}
	for k, v := range m {
		out[k] = v.Latency
	}
	return out
}

// nines maps percentile q to -log10(1-q/100) so that 90, 99, 99.9 are
// evenly spaced; the 100th percentile (max) is left out.
func nines(curve []Point) []Point {
	var out []Point
	for _, c := range curve {
		if c.X < 100 {
			out = append(out, Point{X: -math.Log10(1 - c.X/100), Y: max(c.Y, 1)})
		}
	}
	return out
}

func ninesTicks() []plot.Tick {
	var t []plot.Tick
	for i, label := range []string{"0", "90", "99", "99.9", "99.99", "99.999"} {
		t = append(t, plot.Tick{Value: float64(i), Label: label})
	}
	return t
}

func lineChart(title, x, y string, ss []series, logY bool) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	// Headroom above the highest point keeps the legend (top left) off
	// the lines.
	maxY := 0.0
	for _, s := range ss {
		for _, pt := range s.pts {
			maxY = max(maxY, pt.Y)
		}
	}
	if maxY > 0 {
		if logY {
			p.Y.Max = maxY * 6
		} else {
			p.Y.Min, p.Y.Max = 0, maxY*1.35
		}
	}
	for _, s := range ss {
		if len(s.pts) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(s.pts))
		for i, pt := range s.pts {
			xys[i].X, xys[i].Y = pt.X, pt.Y
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, fmt.Errorf("chart %q series %s: %w", title, s.name, err)
		}
		c := seriesColors[s.name]
		if c == nil {
			c = color.Black
		}
		l.Color, pts.Color = c, c
		l.Width = vg.Points(1.5)
		pts.Radius = vg.Points(2)
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
	}
	return p, nil
}
