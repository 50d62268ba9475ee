package chaos

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// EchoConfig shapes a round of well-behaved echo clients: Clients
// connections each send Messages messages of Size bytes, one at a time,
// and wait for each echo.
type EchoConfig struct {
	Clients, Messages, Size int
	// Timeout bounds each client (default 30s).
	Timeout time.Duration
	// URL overrides the target's echo URL (e.g. through a proxy).
	URL string
}

// EchoOutcome sums what the echo clients saw.
type EchoOutcome struct {
	Sent, Echoed int
	// Mismatched echoes differed from what was sent (content or order).
	Mismatched int
	// Failed clients hit an error (dial, read, write); FirstError is one.
	Failed     int
	FirstError string
	// MinRTT and MaxRTT bound the round trips measured.
	MinRTT, MaxRTT time.Duration
}

// EchoLoad runs one round of echo clients concurrently.
func EchoLoad(ctx context.Context, t Target, cfg EchoConfig) EchoOutcome {
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	url := cfg.URL
	if url == "" {
		url = t.EchoURL()
	}
	var mu sync.Mutex
	var out EchoOutcome
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		out.Failed++
		if out.FirstError == "" {
			out.FirstError = err.Error()
		}
	}
	var wg sync.WaitGroup
	for c := 0; c < cfg.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := Dial(ctx, url)
			if err != nil {
				fail(err)
				return
			}
			defer conn.Close()
			_ = conn.NetConn().SetDeadline(time.Now().Add(cfg.Timeout))
			msg := make([]byte, max(cfg.Size, 8))
			for i := range msg {
				msg[i] = byte('a' + (i+c)%26)
			}
			for i := 0; i < cfg.Messages; i++ {
				binary.BigEndian.PutUint64(msg, uint64(i))
				start := time.Now()
				if err := conn.WriteMessage(OpBinary, msg); err != nil {
					fail(fmt.Errorf("client %d message %d: %w", c, i, err))
					return
				}
				mu.Lock()
				out.Sent++
				mu.Unlock()
				_, got, err := conn.ReadMessage()
				if err != nil {
					fail(fmt.Errorf("client %d message %d: %w", c, i, err))
					return
				}
				rtt := time.Since(start)
				mu.Lock()
				out.Echoed++
				if !bytes.Equal(got, msg) {
					out.Mismatched++
				}
				if out.MinRTT == 0 || rtt < out.MinRTT {
					out.MinRTT = rtt
				}
				out.MaxRTT = max(out.MaxRTT, rtt)
				mu.Unlock()
			}
			_ = conn.NetConn().SetDeadline(time.Time{})
			_ = conn.CloseGracefully(2 * time.Second)
		}()
	}
	wg.Wait()
	return out
}
