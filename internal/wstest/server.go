package wstest

import (
	"context"
	"sync"
	"testing"
)

// Serve runs serve in a goroutine with a context of its own and returns
// once ready is closed. It fails the test (t.Fatalf) if serve returns
// before that.
//
// The returned stop cancels the context and waits for serve's result;
// calling it again returns the same result. Tests call it to observe a
// shutdown; otherwise it runs at cleanup, where a non-nil result fails
// the test.
func Serve(t testing.TB, serve func(context.Context) error, ready <-chan struct{}) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Serve returned before it was ready: %v", err)
		return func() error { return err }
	}
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() { cancel(); result = <-done })
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve returned %v", err)
		}
	})
	return stop
}
