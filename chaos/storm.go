package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"
)

// StormOutcome classifies every connection attempt of Storm.
type StormOutcome struct {
	Attempts int `json:"attempts"`
	// Upgraded attempts got 101 and are held open in Peers.
	Upgraded int `json:"upgraded"`
	// Refused503 got HTTP 503 (fd_pressure, max_connections).
	Refused503 int `json:"refused_503"`
	// OtherStatus counts other HTTP statuses, by status.
	OtherStatus map[int]int `json:"other_status,omitempty"`
	// ClosedFast were closed by the server before any answer (refused at
	// accept under the descriptor hard cap).
	ClosedFast int `json:"closed_fast"`
	// Hung got no answer within the resolve deadline: the failure Storm
	// exists to catch.
	Hung int `json:"hung"`
	// Slowest is the longest time an attempt took to resolve.
	Slowest time.Duration `json:"slowest_ns"`
}

// Storm makes attempts upgrade attempts to url, concurrency at a time,
// and holds the upgraded ones open (PeerIdle) so that descriptors stay
// used. Every attempt must resolve (101, an HTTP status, or a close)
// within resolveWithin, else it counts as Hung.
func Storm(ctx context.Context, url string, attempts, concurrency int, resolveWithin time.Duration) (StormOutcome, *Peers) {
	out := StormOutcome{Attempts: attempts, OtherStatus: map[int]int{}}
	held := &Peers{codes: map[uint16]int{}}
	var mu sync.Mutex
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i := 0; i < attempts; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			c, err := Dial(ctx, url, WithHandshakeTimeout(resolveWithin))
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			out.Slowest = max(out.Slowest, took)
			var he *HandshakeError
			var ne net.Error
			switch {
			case err == nil:
				out.Upgraded++
				held.conns = append(held.conns, c)
			case errors.As(err, &he) && he.Status == 503:
				out.Refused503++
			case errors.As(err, &he):
				out.OtherStatus[he.Status]++
			case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
				out.Hung++
			default:
				out.ClosedFast++
			}
		}()
	}
	wg.Wait()
	return out, held
}

// RawConns are TCP connections that never send a request.
type RawConns struct{ conns []net.Conn }

// OpenRaw opens n TCP connections to the host of wsURL and sends nothing.
// Connections the server refuses at once still count: they are the
// point. On error it returns the connections opened so far (never nil).
func OpenRaw(ctx context.Context, wsURL string, n int) (*RawConns, error) {
	r := &RawConns{}
	u, err := url.Parse(wsURL)
	if err != nil {
		return r, fmt.Errorf("parse %q: %w", wsURL, err)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	for i := 0; i < n; i++ {
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return r, fmt.Errorf("raw connection %d: %w", i, err)
		}
		r.conns = append(r.conns, c)
	}
	return r, nil
}

// WaitClosed waits up to timeout for the server to close every raw
// connection and returns how many it closed.
func (r *RawConns) WaitClosed(timeout time.Duration) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	closed := 0
	deadline := time.Now().Add(timeout)
	for _, c := range r.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			mu.Lock()
			closed++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return closed
}

// Close closes every raw connection.
func (r *RawConns) Close() {
	for _, c := range r.conns {
		_ = c.Close()
	}
}
