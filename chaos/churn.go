package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ChurnConfig shapes the churn injector: Cycles connect/use/close cycles
// spread over Workers goroutines, bounded by Timeout (default 5 minutes).
type ChurnConfig struct {
	Cycles, Workers int
	Timeout         time.Duration
}

// ChurnOutcome counts how the cycles went. Every cycle ends one of three
// ways, in rotation: a close handshake (Graceful), an RST without a close
// frame (Resets), or a FIN without a close frame (Dropped).
type ChurnOutcome struct {
	Cycles, Graceful, Resets, Dropped int
	// Refused is upgrades answered with an HTTP status; Failed is cycles
	// that hit another error (dial, echo mismatch); FirstError describes
	// one of them.
	Refused, Failed int
	FirstError      string
}

// Churn runs the churn injector against the echo endpoint (every fourth
// cycle on a topic instead, so subscriptions churn too).
func Churn(ctx context.Context, t Target, cfg ChurnConfig) (ChurnOutcome, error) {
	if cfg.Cycles <= 0 || cfg.Workers <= 0 {
		return ChurnOutcome{}, fmt.Errorf("churn: need cycles > 0 and workers > 0")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var next atomic.Int64
	var mu sync.Mutex
	var out ChurnOutcome
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		var he *HandshakeError
		if errors.As(err, &he) {
			out.Refused++
		} else {
			out.Failed++
		}
		if out.FirstError == "" {
			out.FirstError = err.Error()
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= cfg.Cycles {
					return
				}
				url := t.EchoURL()
				if i%4 == 3 {
					url = t.TopicURL(fmt.Sprintf("churn-%d", i%16))
				}
				c, err := Dial(ctx, url, WithHandshakeTimeout(10*time.Second))
				if err != nil {
					fail(err)
					continue
				}
				if i%4 != 3 {
					payload := fmt.Sprintf("cycle-%d", i)
					_ = c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
					err := c.WriteMessage(OpText, []byte(payload))
					var got []byte
					if err == nil {
						_, got, err = c.ReadMessage()
					}
					if err == nil && string(got) != payload {
						err = fmt.Errorf("echo %q, want %q", got, payload)
					}
					_ = c.NetConn().SetDeadline(time.Time{})
					if err != nil {
						_ = c.Abort()
						fail(fmt.Errorf("cycle %d: %w", i, err))
						continue
					}
				}
				mu.Lock()
				switch i % 3 {
				case 0:
					out.Graceful++
				case 1:
					out.Resets++
				default:
					out.Dropped++
				}
				out.Cycles++
				mu.Unlock()
				switch i % 3 {
				case 0:
					_ = c.CloseGracefully(5 * time.Second)
				case 1:
					_ = c.Abort()
				default:
					_ = c.Close()
				}
			}
		}()
	}
	wg.Wait()
	if out.Cycles+out.Refused+out.Failed < cfg.Cycles {
		return out, fmt.Errorf("churn: %d of %d cycles ran before the timeout: %w", out.Cycles+out.Refused+out.Failed, cfg.Cycles, ctx.Err())
	}
	return out, nil
}
