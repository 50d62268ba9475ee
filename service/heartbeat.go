package service

import (
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// The heartbeat is one housekeeping goroutine per server, not a timer
// per connection: every tick it advances a coarse clock (which sessions
// read, instead of calling time.Now per frame), samples the descriptor
// count, and sweeps the registry once — closing sessions whose token has
// expired (4001, auth.mode jwt), closing connections whose writes
// have stalled for write_timeout (the write watchdog, backpressure.go),
// pinging those whose ping_interval has passed and closing those from
// which nothing has arrived for ping_interval + pong_timeout. A sweep
// over 100k sessions is a few milliseconds of uncontended locks and
// atomic loads.

// registryShards spreads registration contention over several locks.
const registryShards = 32

type registry struct {
	shards [registryShards]struct {
		mu sync.Mutex
		m  map[uint64]*session
	}
}

func newRegistry() *registry {
	r := &registry{}
	for i := range r.shards {
		r.shards[i].m = make(map[uint64]*session)
	}
	return r
}

func (r *registry) add(s *session) {
	sh := &r.shards[s.id%registryShards]
	sh.mu.Lock()
	sh.m[s.id] = s
	sh.mu.Unlock()
}

func (r *registry) remove(s *session) {
	sh := &r.shards[s.id%registryShards]
	sh.mu.Lock()
	delete(sh.m, s.id)
	sh.mu.Unlock()
}

// each calls f for every session, outside the shard locks (f may close
// sessions, which removes them). buf is reused between calls.
func (r *registry) each(buf []*session, f func(*session)) []*session {
	for i := range r.shards {
		sh := &r.shards[i]
		buf = buf[:0]
		sh.mu.Lock()
		for _, s := range sh.m {
			buf = append(buf, s)
		}
		sh.mu.Unlock()
		for _, s := range buf {
			f(s)
		}
	}
	clear(buf)
	return buf[:0]
}

func (r *registry) len() int {
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// tickInterval is the housekeeping period: fine enough to honour the
// heartbeat settings, write_timeout, frame_timeout and, with auth.mode
// jwt, auth.jwt.leeway (each is enforced within a quarter of itself, or
// 1s), coarse enough to cost nothing.
func tickInterval(c *Config) time.Duration {
	shortest := min(c.Heartbeat.PingInterval, c.Heartbeat.PongTimeout, c.Backpressure.WriteTimeout, c.Limits.FrameTimeout)
	if c.Auth.Mode == AuthJWT {
		// exp is enforced within a quarter of the leeway (or 10ms
		// without one), so a session outlives its token by at most
		// 1.25 leeway.
		shortest = min(shortest, c.Auth.JWT.Leeway)
	}
	return min(max(shortest/4, 10*time.Millisecond), time.Second)
}

// housekeeping runs until stop is closed.
func (srv *Server) housekeeping(stop <-chan struct{}) {
	t := time.NewTicker(tickInterval(&srv.cfg))
	defer t.Stop()
	var buf []*session
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			srv.clock.Store(now.UnixNano())
			srv.fd.sample()
			buf = srv.sessions.each(buf, srv.heartbeat)
		}
	}
}

// heartbeat checks one session on a sweep.
func (srv *Server) heartbeat(s *session) {
	if s.isDying() {
		return
	}
	now := srv.now()
	if s.expires != 0 && now >= s.expires {
		s.tokenExpired()
		return
	}
	if s.buf.stalled(now) {
		srv.counters.writeTimeouts.Add(1)
		srv.log.LogAttrs(s.ctx, slog.LevelInfo, "write timeout: peer not reading", slog.Uint64("conn_id", s.id),
			slog.Int64("buffered_bytes", s.buf.buffered()))
		s.abort(reasonWriteTimeout, errWriteStalled)
		return
	}
	if s.buf.isPaused() {
		// Paused reading is not idleness: the client may be sending
		// all along; we are the ones not reading.
		s.touch()
		return
	}
	if st := s.msgStarted.Load(); st != 0 && time.Duration(now-st) > srv.cfg.Limits.FrameTimeout {
		s.frameTimeout()
		return
	}
	hb := srv.cfg.Heartbeat
	if time.Duration(now-s.lastSeen.Load()) > hb.PingInterval+hb.PongTimeout {
		s.heartbeatTimeout()
		return
	}
	if time.Duration(now-s.lastPing.Load()) >= hb.PingInterval && s.pingPending.CompareAndSwap(false, true) {
		s.lastPing.Store(now)
		s.queueControl(func() error {
			s.pingPending.Store(false)
			return s.conn.WritePing(nil)
		})
	}
}

// firstPingJitter spreads the first ping of a connection over the second
// half of its first ping_interval: connections opened together (a
// reconnect storm, a load test) would otherwise be pinged in the same
// sweep, every interval, and their ping writes (one gws write goroutine
// each) would all run at once: 10k idle connections cost ~30 MB of
// transient stacks per burst, kept as RSS, in the benchmarks.
func firstPingJitter(interval time.Duration) int64 {
	return rand.Int64N(int64(interval)/2 + 1)
}

// isDying reports whether the server has started closing the session.
func (s *session) isDying() bool {
	select {
	case <-s.dying:
		return true
	default:
		return false
	}
}
