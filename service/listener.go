package service

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// guardedListener protects the accept loop. Hand-written because no
// library does this: netutil.LimitListener blocks Accept when full,
// which leaves clients hanging in the kernel backlog — exactly what must
// not happen under descriptor pressure. Instead:
//   - connections over the handshake cap or the descriptor hard cap are
//     answered at once with a canned 503 and closed (never a hang);
//   - when accept itself fails with EMFILE/ENFILE, a reserved spare
//     descriptor is released to accept-and-close the pending connections
//     (the nginx/bun technique), then re-reserved, with backoff so the
//     loop never spins; the condition is logged at most every 5 s.
type guardedListener struct {
	net.Listener
	fd            *fdGuard // nil: no descriptor accounting (admin)
	pressure      *fdGuard // re-sampled when accept fails with EMFILE/ENFILE
	maxHandshakes int64    // 0: no cap (admin)
	handshakes    atomic.Int64
	maxConns      int64        // admin: open connections cap; 0: none
	conns         atomic.Int64 // admin: open connections
	refused       atomic.Int64 // closed at accept (caps)
	shed          atomic.Int64 // closed at accept (EMFILE)
	log           *slog.Logger
	onError       func(errno string)

	spareMu sync.Mutex
	spare   *os.File
	lastLog time.Time
}

// overloadResponse is written to connections refused at accept, before
// any request is read: clients see a 503, not a reset or a hang.
var overloadResponse = []byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\nwsd: overloaded\r\n")

func newGuardedListener(l net.Listener, fd *fdGuard, maxHandshakes int, log *slog.Logger, onError func(string)) *guardedListener {
	g := &guardedListener{Listener: l, fd: fd, maxHandshakes: int64(maxHandshakes), log: log, onError: onError}
	g.reserveSpare()
	return g
}

func (l *guardedListener) reserveSpare() {
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	if l.spare == nil {
		// Failure is tolerated: shedding then waits for descriptors to
		// free up by themselves, with backoff.
		l.spare, _ = os.Open(os.DevNull)
	}
}

// Accept returns the next admitted connection. It returns an error only
// when the listener is closed or fails permanently.
func (l *guardedListener) Accept() (net.Conn, error) {
	backoff := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			errno := acceptErrno(err)
			if errno == "" {
				return nil, err
			}
			l.onError(errno)
			if l.pressure != nil {
				l.pressure.sample() // the guard learns at once, not at the next tick
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), 500*time.Millisecond)
			l.shedPending(errno, backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if l.fd == nil {
			if l.maxConns == 0 {
				return c, nil
			}
			if l.conns.Add(1) > l.maxConns {
				l.conns.Add(-1)
				l.refused.Add(1)
				refuse(c)
				continue
			}
			return &countedConn{Conn: c, n: &l.conns}, nil
		}
		l.fd.public.Add(1)
		tc := &trackedConn{Conn: c, l: l}
		if (l.maxHandshakes > 0 && l.handshakes.Load() >= l.maxHandshakes) || l.fd.exhausted() {
			l.refused.Add(1)
			refuse(tc)
			continue
		}
		l.handshakes.Add(1)
		tc.pending.Store(true)
		return tc, nil
	}
}

// refuse writes the canned 503 and closes. The socket's send buffer is
// empty, so the short write deadline is only a guard.
func refuse(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write(overloadResponse)
	_ = c.Close()
}

// acceptErrno names the descriptor-exhaustion errors that Accept
// survives; any other error ends Serve as usual.
func acceptErrno(err error) string {
	switch {
	case errors.Is(err, syscall.EMFILE):
		return "emfile"
	case errors.Is(err, syscall.ENFILE):
		return "enfile"
	}
	return ""
}

// shedPending frees the spare descriptor and uses it to accept and close
// the connections waiting in the backlog, so their clients get an answer
// instead of a hang; then it re-reserves the spare.
func (l *guardedListener) shedPending(errno string, backoff time.Duration) {
	l.spareMu.Lock()
	if l.spare != nil {
		_ = l.spare.Close()
		l.spare = nil
	}
	l.spareMu.Unlock()

	shed := 0
	if dl, ok := l.Listener.(interface{ SetDeadline(time.Time) error }); ok {
		_ = dl.SetDeadline(time.Now().Add(10 * time.Millisecond))
		for range 256 {
			c, err := l.Listener.Accept()
			if err != nil {
				break
			}
			refuse(c)
			shed++
		}
		_ = dl.SetDeadline(time.Time{})
	}
	l.shed.Add(int64(shed))
	l.reserveSpare()

	l.spareMu.Lock()
	logNow := time.Since(l.lastLog) >= 5*time.Second
	if logNow {
		l.lastLog = time.Now()
	}
	l.spareMu.Unlock()
	if logNow {
		l.log.LogAttrs(context.Background(), slog.LevelError, "accept failed: out of descriptors; shedding pending connections",
			slog.String("errno", errno), slog.Int("shed", shed), slog.Int64("shed_total", l.shed.Load()),
			slog.Duration("backoff", backoff))
	}
}

// trackedConn keeps the public connection and handshake counts exact:
// Close (from net/http, gws or wsd) decrements them once.
type trackedConn struct {
	net.Conn
	l       *guardedListener
	pending atomic.Bool // counted in handshakes
	closed  atomic.Bool
}

// upgraded moves the connection out of the handshake count.
func (c *trackedConn) upgraded() {
	if c.pending.CompareAndSwap(true, false) {
		c.l.handshakes.Add(-1)
	}
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.upgraded()
		c.l.fd.public.Add(-1)
	}
	return err
}

// countedConn keeps the admin listener's open-connection count exact:
// Close decrements it once.
type countedConn struct {
	net.Conn
	n      *atomic.Int64
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.n.Add(-1)
	}
	return err
}

// closeSpare releases the spare descriptor when the server stops.
func (l *guardedListener) closeSpare() {
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	if l.spare != nil {
		_ = l.spare.Close()
		l.spare = nil
	}
}
