package chaos

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// StalledFramesResult is what StalledFrames observed.
type StalledFramesResult struct {
	// Opened is the peers that upgraded and sent their partial frame.
	Opened int
	// Codes counts the close codes the peers received (0: the
	// connection ended without a close frame).
	Codes map[uint16]int
	// Errors is the first error of a peer that could not run, if any.
	Errors []string
}

// StalledFrames opens n connections to the echo endpoint; each sends the
// header of a binary frame of size bytes and all but its last byte, then
// stalls, and waits up to wait for the server to close it. It attacks
// what a server reserves for a frame before its payload has arrived.
func StalledFrames(ctx context.Context, t Target, n, size int, wait time.Duration) StalledFramesResult {
	ctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	hdr := []byte{0x82, 0x80 | 127}
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(size))
	hdr = append(hdr, 0, 0, 0, 0) // mask key 0: the payload goes as it is
	frame := append(hdr, make([]byte, size-1)...)
	res := StalledFramesResult{Codes: map[uint16]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // dial concurrency
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			c, err := Dial(ctx, t.EchoURL())
			if err == nil {
				_, err = c.NetConn().Write(frame)
			}
			<-sem
			if err != nil {
				mu.Lock()
				if len(res.Errors) < 5 {
					res.Errors = append(res.Errors, err.Error())
				}
				mu.Unlock()
				if c != nil {
					_ = c.Close()
				}
				return
			}
			defer c.Close()
			mu.Lock()
			res.Opened++
			mu.Unlock()
			code, _, _ := c.ReadUntilClose(wait)
			mu.Lock()
			res.Codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return res
}

// String summarises the close codes seen.
func (r StalledFramesResult) String() string {
	return fmt.Sprintf("%d opened, close codes %v", r.Opened, r.Codes)
}
