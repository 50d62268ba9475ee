package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Peers is a group of open WebSocket connections held by the injector.
// Live peers answer pings (so only a fault in between can make them look
// dead); silent peers neither read nor answer (a half-open client whose
// host vanished: the server's pings are ACKed by nobody's application).
type Peers struct {
	conns []*Conn
	wg    sync.WaitGroup
	mu    sync.Mutex
	codes map[uint16]int // close codes received by live peers (0: no frame)
	ended int
}

// PeerMode is how OpenPeers' connections behave.
type PeerMode int

const (
	// PeerLive: a reader goroutine answers pings and records how the
	// connection ends.
	PeerLive PeerMode = iota
	// PeerSilent: nothing is read or answered (a vanished host).
	PeerSilent
	// PeerIdle: nothing runs until the caller reads (Echo); pings are
	// answered then.
	PeerIdle
)

// OpenPeers opens n connections to url in the given mode. It stops at
// the first dial error and returns the peers opened so far (never nil)
// with it.
func OpenPeers(ctx context.Context, url string, n int, mode PeerMode, opts ...DialOption) (*Peers, error) {
	p := &Peers{codes: map[uint16]int{}}
	for i := 0; i < n; i++ {
		c, err := Dial(ctx, url, opts...)
		if err != nil {
			return p, fmt.Errorf("peer %d of %d: %w", i+1, n, err)
		}
		p.conns = append(p.conns, c)
		if mode == PeerSilent {
			c.SetAutoPong(false)
		}
		if mode != PeerLive {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			code, _, _ := c.ReadUntilClose(24 * time.Hour)
			p.mu.Lock()
			p.codes[code]++
			p.ended++
			p.mu.Unlock()
		}()
	}
	return p, nil
}

// Len returns the number of open peers.
func (p *Peers) Len() int { return len(p.conns) }

// Conns returns the peers' connections.
func (p *Peers) Conns() []*Conn { return p.conns }

// Ended returns how many live peers saw their connection end, and the
// close codes they received (0: ended without a close frame).
func (p *Peers) Ended() (int, map[uint16]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[uint16]int, len(p.codes))
	for k, v := range p.codes {
		out[k] = v
	}
	return p.ended, out
}

// WaitEnded waits up to timeout for every live peer's connection to end.
func (p *Peers) WaitEnded(ctx context.Context, timeout time.Duration) error {
	return Poll(ctx, timeout, 50*time.Millisecond, func() error {
		if n, _ := p.Ended(); n < len(p.conns) {
			return fmt.Errorf("%d of %d connections still open", len(p.conns)-n, len(p.conns))
		}
		return nil
	})
}

// Echo sends one text message on every peer and checks the echo; it is
// for PeerIdle echo peers, e.g. sessions that must keep working during FD pressure.
func (p *Peers) Echo(timeout time.Duration) (ok int, err error) {
	var errs []error
	for i, c := range p.conns {
		want := fmt.Sprintf("ping-%d-%d", i, time.Now().UnixNano())
		_ = c.NetConn().SetDeadline(time.Now().Add(timeout))
		if werr := c.WriteMessage(OpText, []byte(want)); werr != nil {
			errs = append(errs, fmt.Errorf("peer %d: %w", i, werr))
			continue
		}
		_, got, rerr := c.ReadMessage()
		_ = c.NetConn().SetDeadline(time.Time{})
		if rerr != nil || string(got) != want {
			errs = append(errs, fmt.Errorf("peer %d: echo %q, %v", i, got, rerr))
			continue
		}
		ok++
	}
	return ok, errors.Join(errs...)
}

// Close closes every peer (FIN) and waits for the readers.
func (p *Peers) Close() {
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.wg.Wait()
}
