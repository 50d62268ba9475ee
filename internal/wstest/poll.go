package wstest

import (
	"testing"
	"time"
)

// CheckFor calls f every `every` until it returns nil, and fails the test
// (t.Fatalf, with f's last error) once total has elapsed without that.
// Tests poll with it instead of sleeping: on a loaded machine a
// condition may take long to hold, so total is a generous bound, never a
// measurement. f runs at least once.
func CheckFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", total, err)
			return
		}
		time.Sleep(every)
	}
}
