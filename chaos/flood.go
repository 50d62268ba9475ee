package chaos

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// FloodConfig shapes the echo flooder: Conns connections each write
// Messages numbered messages of Size bytes to /ws/echo without reading
// until the server has paused reading (or PauseWait elapses), then read
// everything back.
type FloodConfig struct {
	Conns, Messages, Size int
	// PauseWait bounds the non-reading phase (default 15s); it must stay
	// below the server's backpressure.max_paused.
	PauseWait time.Duration
	// Hold keeps the flooders not reading this long after every
	// connection is paused (default 0), so a time series shows the
	// plateau.
	Hold time.Duration
	// Timeout bounds the whole run (default 2 minutes).
	Timeout time.Duration
}

// FloodOutcome is what the flooders observed.
type FloodOutcome struct {
	// PausedSeen is the highest /debug/stats paused count seen while the
	// flooders were not reading.
	PausedSeen int64
	// Sent and Echoed are summed over connections; Lost = Sent − Echoed.
	Sent, Echoed, Lost int
	// OutOfOrder counts echoes whose sequence number was not the next
	// expected one.
	OutOfOrder int
	// Closed counts connections the server closed during the run.
	Closed int
}

// Flood runs the echo-flooder injector.
func Flood(ctx context.Context, t Target, cfg FloodConfig) (FloodOutcome, error) {
	if cfg.PauseWait == 0 {
		cfg.PauseWait = 15 * time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Size < 8 || cfg.Messages <= 0 || cfg.Conns <= 0 {
		return FloodOutcome{}, fmt.Errorf("flood: need conns > 0, messages > 0, size >= 8")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	conns := make([]*Conn, 0, cfg.Conns)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i := 0; i < cfg.Conns; i++ {
		c, err := Dial(ctx, t.EchoURL(), WithRecvBuffer(16<<10), WithSendBuffer(16<<10))
		if err != nil {
			return FloodOutcome{}, fmt.Errorf("flooder %d: %w", i, err)
		}
		// A server that never resumes must fail the run, not hang it.
		_ = c.NetConn().SetWriteDeadline(time.Now().Add(cfg.Timeout))
		conns = append(conns, c)
	}

	var out FloodOutcome
	var mu sync.Mutex
	var writers sync.WaitGroup
	writeErrs := make([]error, len(conns))
	for i, c := range conns {
		writers.Add(1)
		go func() {
			defer writers.Done()
			msg := make([]byte, cfg.Size)
			for seq := 0; seq < cfg.Messages; seq++ {
				binary.BigEndian.PutUint64(msg, uint64(seq))
				if err := c.WriteMessage(OpBinary, msg); err != nil {
					writeErrs[i] = err
					return
				}
				mu.Lock()
				out.Sent++
				mu.Unlock()
			}
		}()
	}
	writersDone := make(chan struct{})
	go func() { writers.Wait(); close(writersDone) }()

	// Not reading: wait for the server to pause (TCP flow control then
	// blocks our writers).
	_ = Poll(ctx, cfg.PauseWait, 100*time.Millisecond, func() error {
		st, err := t.Admin.Stats(ctx)
		if err != nil {
			return err
		}
		out.PausedSeen = max(out.PausedSeen, st.Paused)
		if st.Paused >= int64(cfg.Conns) {
			return nil
		}
		select {
		case <-writersDone:
			return nil // everything written without pausing
		default:
		}
		return fmt.Errorf("paused %d of %d", st.Paused, cfg.Conns)
	})

	if cfg.Hold > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(cfg.Hold):
		}
	}

	// Now read everything back.
	var readers sync.WaitGroup
	for _, c := range conns {
		readers.Add(1)
		go func() {
			defer readers.Done()
			_ = c.NetConn().SetReadDeadline(time.Now().Add(cfg.Timeout))
			next := uint64(0)
			got, bad := 0, 0
			closed := false
			for got < cfg.Messages {
				_, p, err := c.ReadMessage()
				if err != nil {
					closed = true
					break
				}
				if len(p) < 8 || binary.BigEndian.Uint64(p) != next {
					bad++
				}
				if len(p) >= 8 {
					next = binary.BigEndian.Uint64(p) + 1
				}
				got++
			}
			mu.Lock()
			out.Echoed += got
			out.OutOfOrder += bad
			if closed {
				out.Closed++
			}
			mu.Unlock()
		}()
	}
	readers.Wait()
	<-writersDone
	out.Lost = out.Sent - out.Echoed
	for _, c := range conns {
		_ = c.CloseGracefully(2 * time.Second)
	}
	return out, errors.Join(writeErrs...)
}
