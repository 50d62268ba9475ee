package chaos

import (
	"fmt"
	"sync"
	"time"
)

// Invariant is one checked property with the value measured.
type Invariant struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Pass bool   `json:"pass"`
}

// Result is the record of one scenario run: the faults injected, every
// invariant with its measured value, and the time series. It is what the
// e2e report renders. Methods are safe for concurrent use.
type Result struct {
	Name        string        `json:"name"`
	Description string        `json:"description"`
	Faults      []string      `json:"faults"`
	Invariants  []Invariant   `json:"invariants"`
	Notes       []string      `json:"notes,omitempty"`
	Series      []Sample      `json:"series"`
	Pass        bool          `json:"pass"`
	Started     time.Time     `json:"started"`
	Duration    time.Duration `json:"duration_ns"`
	// MemoryBound is the scenario's memory bound in bytes (0: none); the
	// chart draws it.
	MemoryBound int64 `json:"memory_bound_bytes,omitempty"`
	// Chart is the PNG chart's file name, set by the report writer.
	Chart string `json:"chart,omitempty"`

	mu sync.Mutex
}

// NewResult starts a result.
func NewResult(name, description string) *Result {
	return &Result{Name: name, Description: description, Started: time.Now(), Pass: true}
}

// Fault records an injected fault.
func (r *Result) Fault(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Faults = append(r.Faults, fmt.Sprintf(format, args...))
}

// Note records an observation that is not pass/fail.
func (r *Result) Note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Check records an invariant and returns pass.
func (r *Result) Check(name string, pass bool, want string, got string, args ...any) bool {
	return r.Add(Invariant{Name: name, Want: want, Got: fmt.Sprintf(got, args...), Pass: pass})
}

// Add records invariants; it returns whether all of them passed.
func (r *Result) Add(invs ...Invariant) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	all := true
	for _, i := range invs {
		r.Invariants = append(r.Invariants, i)
		if !i.Pass {
			r.Pass = false
			all = false
		}
	}
	return all
}

// Failed returns the invariants that did not hold.
func (r *Result) Failed() []Invariant {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Invariant
	for _, i := range r.Invariants {
		if !i.Pass {
			out = append(out, i)
		}
	}
	return out
}

// Finish stores the series and the duration.
func (r *Result) Finish(series []Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Series = series
	r.Duration = time.Since(r.Started)
}

// Fail marks the result failed with an error that stopped the scenario.
func (r *Result) Fail(err error) {
	r.Add(Invariant{Name: "scenario ran to completion", Want: "no error", Got: err.Error()})
}
