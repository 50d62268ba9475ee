package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wsd-dev/wsd/chaos"
)

func TestWriteProducesJSONMarkdownAndCharts(t *testing.T) {
	ok := chaos.NewResult("churn", "cycles")
	ok.Fault("10000 cycles")
	ok.Check("every cycle completed", true, "10000", "%d", 10000)
	bad := chaos.NewResult("fd/pressure", "nofile")
	bad.Check("no attempt hung", false, "0", "%d", 3)
	bad.Fail(errors.New("boom"))
	for i := range 30 {
		s := chaos.Sample{T: float64(i) / 4, OpenFDs: int64(12 + i), Connections: int64(i), Paused: int64(i % 3), MemoryBytes: int64(i) << 20}
		if i == 0 {
			s.MemoryBytes = -1
		}
		ok.Series = append(ok.Series, s)
	}
	ok.MemoryBound = 64 << 20
	ok.Finish(ok.Series)
	dir := t.TempDir()
	if err := Write(dir, []*chaos.Result{ok, bad}); err != nil {
		t.Fatal(err)
	}
	var doc Document
	js, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Pass || len(doc.Scenarios) != 2 || !doc.Scenarios[0].Pass || doc.Scenarios[1].Pass || len(doc.Scenarios[0].Series) != 30 {
		t.Errorf("document: pass=%v, %d scenarios", doc.Pass, len(doc.Scenarios))
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# wsd chaos report: FAIL", "| every cycle completed | 10000 | 10000 | pass |", "| no attempt hung | 0 | 3 | **FAIL** |", "![churn](churn.png)", "- 10000 cycles"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	png, err := os.ReadFile(filepath.Join(dir, "churn.png"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 2000 {
		t.Errorf("churn.png is not a PNG chart (%d bytes)", len(png))
	}
	if _, err := os.Stat(filepath.Join(dir, "fd_pressure.png")); !os.IsNotExist(err) {
		t.Errorf("a scenario without samples got a chart: %v", err)
	}
}

func TestWriteFailsOnAnUnwritableDirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(f, "sub"), nil); err == nil {
		t.Error("want an error")
	}
}
