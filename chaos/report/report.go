// Package report writes a chaos run's results: report.json (every
// scenario with its faults, invariants and time series), report.md (a
// summary a person reads first) and one PNG chart per scenario
// (descriptors, connections, paused sessions and memory over time),
// rendered with gonum.org/v1/plot.
package report

import (
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/wsd-dev/wsd/chaos"
)

// Document is report.json.
type Document struct {
	Generated time.Time       `json:"generated"`
	Pass      bool            `json:"pass"`
	Scenarios []*chaos.Result `json:"scenarios"`
}

// Write renders results into dir (created if missing). It fails when the
// directory or a file cannot be written or a chart cannot be rendered.
func Write(dir string, results []*chaos.Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report: create %s: %w", dir, err)
	}
	doc := Document{Generated: time.Now().UTC(), Pass: true, Scenarios: results}
	for _, r := range results {
		doc.Pass = doc.Pass && r.Pass
		if len(r.Series) == 0 {
			continue
		}
		r.Chart = fileName(r.Name) + ".png"
		if err := Chart(filepath.Join(dir, r.Chart), r); err != nil {
			return err
		}
	}
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("report: encode JSON: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), js, 0o644); err != nil {
		return fmt.Errorf("report: write JSON: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(Markdown(doc)), 0o644); err != nil {
		return fmt.Errorf("report: write Markdown: %w", err)
	}
	return nil
}

// fileName turns a scenario name (a test name) into a file name.
func fileName(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
}

// Markdown renders the summary.
func Markdown(doc Document) string {
	var b strings.Builder
	verdict := "PASS"
	if !doc.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "# wsd chaos report: %s\n\nGenerated %s.\n\n", verdict, doc.Generated.Format(time.RFC3339))
	b.WriteString("| scenario | result | invariants | duration |\n|---|---|---|---|\n")
	for _, r := range doc.Scenarios {
		passed := 0
		for _, i := range r.Invariants {
			if i.Pass {
				passed++
			}
		}
		fmt.Fprintf(&b, "| [%s](#%s) | %s | %d/%d | %.1fs |\n", r.Name, anchor(r.Name), mark(r.Pass), passed, len(r.Invariants), r.Duration.Seconds())
	}
	for _, r := range doc.Scenarios {
		fmt.Fprintf(&b, "\n## %s\n\n%s\n\n**Result: %s** (%.1fs)\n\n", r.Name, r.Description, mark(r.Pass), r.Duration.Seconds())
		if len(r.Faults) > 0 {
			b.WriteString("Faults injected:\n\n")
			for _, f := range r.Faults {
				fmt.Fprintf(&b, "- %s\n", f)
			}
			b.WriteString("\n")
		}
		b.WriteString("| invariant | want | measured | |\n|---|---|---|---|\n")
		for _, i := range r.Invariants {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", cell(i.Name), cell(i.Want), cell(i.Got), mark(i.Pass))
		}
		if len(r.Notes) > 0 {
			b.WriteString("\nNotes:\n\n")
			for _, n := range r.Notes {
				fmt.Fprintf(&b, "- %s\n", n)
			}
		}
		if len(r.Series) > 0 {
			b.WriteString("\n" + seriesTable(r.Series))
		}
		if r.Chart != "" {
			fmt.Fprintf(&b, "\n![%s](%s)\n", r.Name, r.Chart)
		}
	}
	return b.String()
}

func anchor(s string) string {
	return strings.ToLower(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return -1
	}, s))
}

func mark(pass bool) string {
	if pass {
		return "pass"
	}
	return "**FAIL**"
}

func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ") }

// seriesTable is a small time series: at most 12 evenly spaced samples.
func seriesTable(s []chaos.Sample) string {
	var b strings.Builder
	b.WriteString("| t (s) | open_fds | goroutines | connections | paused | buffered | memory |\n|---|---|---|---|---|---|---|\n")
	step := max(1, (len(s)+11)/12)
	for i := 0; i < len(s); i += step {
		p := s[i]
		fmt.Fprintf(&b, "| %.1f | %d | %d | %d | %d | %d | %s |\n", p.T, p.OpenFDs, p.Goroutines, p.Connections, p.Paused, p.BufferedBytes, mem(p.MemoryBytes))
	}
	if (len(s)-1)%step != 0 {
		p := s[len(s)-1]
		fmt.Fprintf(&b, "| %.1f | %d | %d | %d | %d | %d | %s |\n", p.T, p.OpenFDs, p.Goroutines, p.Connections, p.Paused, p.BufferedBytes, mem(p.MemoryBytes))
	}
	return b.String()
}

func mem(b int64) string {
	if b < 0 {
		return "n/a"
	}
	return chaos.MiB(b)
}

// Chart renders r's series as a PNG at path: descriptors, connections
// and paused sessions on top, memory (MiB) below, sharing the time axis.
func Chart(path string, r *chaos.Result) error {
	counts := plot.New()
	counts.Title.Text = r.Name
	counts.Y.Label.Text = "count"
	counts.Legend.Top = true
	memory := plot.New()
	memory.X.Label.Text = "seconds"
	memory.Y.Label.Text = "memory (MiB)"
	memory.Legend.Top = true

	series := []struct {
		name string
		pl   *plot.Plot
		v    func(chaos.Sample) float64
		c    color.RGBA
	}{
		{"open_fds", counts, func(s chaos.Sample) float64 { return float64(s.OpenFDs) }, color.RGBA{R: 200, A: 255}},
		{"connections", counts, func(s chaos.Sample) float64 { return float64(s.Connections) }, color.RGBA{B: 200, A: 255}},
		{"paused", counts, func(s chaos.Sample) float64 { return float64(s.Paused) }, color.RGBA{G: 150, A: 255}},
		{"memory", memory, func(s chaos.Sample) float64 { return float64(s.MemoryBytes) / (1 << 20) }, color.RGBA{R: 120, B: 120, A: 255}},
	}
	for _, sr := range series {
		pts := make(plotter.XYs, 0, len(r.Series))
		for _, s := range r.Series {
			if sr.name == "memory" && s.MemoryBytes < 0 {
				continue
			}
			pts = append(pts, plotter.XY{X: s.T, Y: sr.v(s)})
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("report: chart %s %s: %w", r.Name, sr.name, err)
		}
		l.Color = sr.c
		l.Width = vg.Points(1.5)
		sr.pl.Add(l)
		sr.pl.Legend.Add(sr.name, l)
	}
	// Same time axis on both panels; memory from zero, with the bound.
	end := 0.0
	if n := len(r.Series); n > 0 {
		end = r.Series[n-1].T
	}
	for _, p := range []*plot.Plot{counts, memory} {
		p.X.Min, p.X.Max = 0, end
	}
	memory.Y.Min = 0
	if r.MemoryBound > 0 {
		bound := float64(r.MemoryBound) / (1 << 20)
		l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: bound}, {X: end, Y: bound}})
		if err != nil {
			return fmt.Errorf("report: chart %s bound: %w", r.Name, err)
		}
		l.Color = color.RGBA{R: 200, G: 120, A: 255}
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		memory.Add(l)
		memory.Legend.Add("bound (container limit)", l)
	}
	img := vgimg.New(8*vg.Inch, 6*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align([][]*plot.Plot{{counts}, {memory}}, tiles, dc)
	counts.Draw(canvases[0][0])
	memory.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("report: create chart: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("report: write chart: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("report: write chart: %w", err)
	}
	return nil
}
