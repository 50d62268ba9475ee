package service

import (
	"sync"
	"time"
)

// The heartbeat is one housekeeping goroutine per server, not a timer
// per connection: every tick it advances a coarse clock (which sessions
// read, instead of calling time.Now per frame), samples the descriptor
// count, and sweeps the registry once — pinging connections whose
// ping_interval has passed and closing those from which nothing has
// arrived for ping_interval + pong_timeout. A sweep over 100k sessions is
// a few milliseconds of atomic loads.

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
// heartbeat settings, coarse enough to cost nothing.
func tickInterval(h HeartbeatConfig) time.Duration {
	return min(max(min(h.PingInterval, h.PongTimeout)/4, 10*time.Millisecond), time.Second)
}

// housekeeping runs until stop is closed.
func (srv *Server) housekeeping(stop <-chan struct{}) {
	t := time.NewTicker(tickInterval(srv.cfg.Heartbeat))
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
	if s.buf.isPaused() {
		// Paused reading is not idleness: the client may be sending
		// all along; we are the ones not reading.
		s.touch()
		return
	}
	hb := srv.cfg.Heartbeat
	if time.Duration(now-s.lastSeen.Load()) > hb.PingInterval+hb.PongTimeout {
		s.heartbeatTimeout()
		return
	}
	if time.Duration(now-s.lastPing.Load()) >= hb.PingInterval && s.pingPending.CompareAndSwap(false, true) {
		s.lastPing.Store(now)
		s.conn.Async(func() {
			s.pingPending.Store(false)
			s.setWriteDeadline()
			_ = s.conn.WritePing(nil)
		})
	}
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
