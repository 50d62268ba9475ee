package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// Admin reads a wsd admin listener (/healthz, /debug/stats, /metrics).
// It keeps one idle connection so that sampling does not itself churn
// descriptors on the server between the baseline and the check.
type Admin struct {
	base string
	hc   *http.Client
}

// NewAdmin returns a client for the admin listener at baseURL
// (http://host:port).
func NewAdmin(baseURL string) *Admin {
	tr := &http.Transport{MaxIdleConns: 2, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}
	return &Admin{base: strings.TrimRight(baseURL, "/"), hc: &http.Client{Transport: tr, Timeout: 3 * time.Second}}
}

// URL returns the admin base URL.
func (a *Admin) URL() string { return a.base }

// Stats fetches /debug/stats.
func (a *Admin) Stats(ctx context.Context) (service.Stats, error) {
	var st service.Stats
	err := a.getJSON(ctx, "/debug/stats", &st)
	return st, err
}

// getJSON decodes the body of path into v.
func (a *Admin) getJSON(ctx context.Context, path string, v any) error {
	body, err := a.get(ctx, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// Healthz returns nil when /healthz answers 200.
func (a *Admin) Healthz(ctx context.Context) error {
	_, err := a.get(ctx, "/healthz")
	return err
}

// Readyz returns nil when /readyz answers 200 (the replica takes
// traffic).
func (a *Admin) Readyz(ctx context.Context) error {
	_, err := a.get(ctx, "/readyz")
	return err
}

// Metrics fetches /metrics (Prometheus text format) and returns the
// samples as name{labels} → value, plus the raw text. found is false when
// the server does not serve /metrics (404).
func (a *Admin) Metrics(ctx context.Context) (samples map[string]float64, raw string, found bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/metrics", nil)
	if err != nil {
		return nil, "", false, fmt.Errorf("GET /metrics: %w", err)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, "", false, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, "", false, fmt.Errorf("read /metrics: %w", err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, "", false, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", false, fmt.Errorf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	return parseMetrics(string(body)), string(body), true, nil
}

// parseMetrics reads the sample lines of the Prometheus text format.
func parseMetrics(text string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the last space outside braces.
		end := strings.LastIndexByte(line, '}')
		rest := line
		name := ""
		if end >= 0 {
			name, rest = line[:end+1], line[end+1:]
		} else if i := strings.IndexByte(line, ' '); i > 0 {
			name, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if name == "" || len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] = v
		}
	}
	return out
}

func (a *Admin) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return body, nil
}

// Close drops the idle admin connection.
func (a *Admin) Close() { a.hc.CloseIdleConnections() }
