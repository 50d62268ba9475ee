package service

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strconv"
	"time"
)

// Stats is the /debug/stats document. The chaos suite compares it with a
// baseline after every scenario to prove that nothing leaked, so every
// field is exact at the time of the call. The zero value is the document
// of nothing open and nothing counted.
type Stats struct {
	// Connections is the number of upgraded, registered sessions;
	// EchoConnections and TopicConnections split it by endpoint.
	Connections      int64 `json:"connections"`
	EchoConnections  int64 `json:"echo_connections"`
	TopicConnections int64 `json:"topic_connections"`
	// Paused is the number of sessions whose reading is paused.
	Paused int64 `json:"paused"`
	// BufferedBytes is the sum of every session's unsent bytes.
	BufferedBytes int64 `json:"buffered_bytes"`
	// OpenFDs is the process's open descriptors (a /proc/self/fd scan);
	// FDLimit is RLIMIT_NOFILE.
	OpenFDs int64 `json:"open_fds"`
	FDLimit int64 `json:"fd_limit"`
	// Goroutines is runtime.NumGoroutine().
	Goroutines int `json:"goroutines"`
	// Topics and Subscribers count the topic registry.
	Topics      int `json:"topics"`
	Subscribers int `json:"subscribers"`
	// Handshakes is public TCP connections not yet upgraded.
	Handshakes int64 `json:"handshakes"`
	// IPEntries is the size of the per-IP connection table.
	IPEntries int `json:"ip_entries"`
	// UserEntries is the size of the per-user connection table (users
	// with a session, when limits.max_connections_per_user is set).
	UserEntries int `json:"user_entries"`
	// Draining is true once a graceful shutdown has started.
	Draining bool `json:"draining"`
	// Totals since start: fan-out messages dropped (slow_consumer:
	// drop), slow consumers evicted with 1013, heartbeat timeouts,
	// connections closed by the write watchdog (write_timeout),
	// connections answered 503 at accept (public: handshake cap or
	// descriptor hard level; admin: admin.max_connections), and
	// connections closed at accept while shedding under EMFILE/ENFILE
	// (both listeners).
	DroppedTotal           int64 `json:"dropped_total"`
	EvictedTotal           int64 `json:"evicted_total"`
	HeartbeatTimeoutsTotal int64 `json:"heartbeat_timeouts_total"`
	WriteTimeoutsTotal     int64 `json:"write_timeouts_total"`
	RefusedAtAcceptTotal   int64 `json:"refused_at_accept_total"`
	ShedTotal              int64 `json:"shed_total"`
	// FrameTimeoutsTotal counts peers closed with 1008 for not finishing
	// a message within limits.frame_timeout; PanicsTotal counts panics
	// recovered on a connection's goroutines (each closed that one
	// connection, the server kept serving).
	FrameTimeoutsTotal int64 `json:"frame_timeouts_total"`
	PanicsTotal        int64 `json:"panics_total"`
	// The link to other replicas (bus.kind: nats, see BusStats):
	// whether the broker connection is up, broker subscriptions (one per
	// topic with a local subscriber), and totals of messages handed to
	// the broker, received from it, and lost on the broker path. With the
	// in-process bus (bus.kind: local) there is no link to lose: connected
	// true, 0 subscriptions, zero totals.
	BusConnected      bool  `json:"bus_connected"`
	BusSubscriptions  int   `json:"bus_subscriptions"`
	BusPublishedTotal int64 `json:"bus_published_total"`
	BusReceivedTotal  int64 `json:"bus_received_total"`
	BusDroppedTotal   int64 `json:"bus_dropped_total"`
}

// Load is the cheap subset of Stats (atomic loads only) that gauges read;
// each field means what the Stats field of the same name does. The zero
// value is no load.
type Load struct {
	EchoConnections, TopicConnections, Paused, BufferedBytes int64
	// Panics is PanicsTotal.
	Panics int64
}

// Load returns the current load; safe to call often.
func (s *Server) Load() Load {
	return Load{
		EchoConnections:  s.counters.echo.Load(),
		TopicConnections: s.counters.topic.Load(),
		Paused:           s.load.paused.Load(),
		BufferedBytes:    s.load.buffered.Load(),
		Panics:           s.counters.panics.Load(),
	}
}

// Stats returns the exact counters; it scans /proc/self/fd, so it is for
// the admin endpoint and tests, not for hot paths.
func (s *Server) Stats() Stats {
	l := s.Load()
	topics, subs := s.bus.Counts()
	st := Stats{
		Connections:            int64(s.sessions.len()),
		EchoConnections:        l.EchoConnections,
		TopicConnections:       l.TopicConnections,
		Paused:                 l.Paused,
		BufferedBytes:          l.BufferedBytes,
		FDLimit:                s.fd.limit,
		Goroutines:             runtime.NumGoroutine(),
		Topics:                 topics,
		Subscribers:            subs,
		IPEntries:              s.adm.ipEntries(),
		UserEntries:            s.adm.userEntries(),
		Draining:               s.adm.draining.Load(),
		DroppedTotal:           s.counters.dropped.Load(),
		EvictedTotal:           s.counters.evicted.Load(),
		HeartbeatTimeoutsTotal: s.counters.heartbeatTimeouts.Load(),
		WriteTimeoutsTotal:     s.counters.writeTimeouts.Load(),
		FrameTimeoutsTotal:     s.counters.frameTimeouts.Load(),
		PanicsTotal:            l.Panics,
		BusConnected:           true,
	}
	if bs, ok := s.bus.(BusStatser); ok {
		b := bs.BusStats()
		st.BusConnected, st.BusSubscriptions = b.Connected, b.Subscriptions
		st.BusPublishedTotal, st.BusReceivedTotal, st.BusDroppedTotal = b.Published, b.Received, b.Dropped
	}
	if s.publicLn != nil {
		st.Handshakes = s.publicLn.handshakes.Load()
		st.RefusedAtAcceptTotal = s.publicLn.refused.Load() + s.adminLn.refused.Load()
		st.ShedTotal = s.publicLn.shed.Load() + s.adminLn.shed.Load()
	}
	if n, ok := countOpenFDs(); ok {
		st.OpenFDs = int64(n)
	} else {
		st.OpenFDs = s.fd.open()
	}
	return st
}

// adminHandler serves /healthz, /readyz, /debug/stats, /debug/pprof/
// (when admin.pprof is set) and the handlers added with WithAdminHandler.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case s.adm.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case s.fd.underPressure():
			http.Error(w, "descriptor pressure", http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	mux.HandleFunc("GET /debug/stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Stats())
	})
	if s.cfg.Admin.Pprof {
		limit := s.cfg.Admin.MaxProfileDuration
		mux.Handle("GET /debug/pprof/", capSeconds(limit, deltaSeconds, http.HandlerFunc(pprof.Index)))
		mux.Handle("GET /debug/pprof/profile", capSeconds(limit, profileSeconds, http.HandlerFunc(pprof.Profile)))
		mux.Handle("GET /debug/pprof/trace", capSeconds(limit, traceSeconds, http.HandlerFunc(pprof.Trace)))
	}
	for pattern, h := range s.admin {
		mux.Handle(pattern, h)
	}
	return mux
}

// capSeconds refuses (400) a profiling request that would run longer
// than limit. secs is how long h runs for the request's seconds
// parameter ("" when absent), parsed as h itself parses it: an
// unparsable value must not slip through as 0 when h falls back to a
// default of 30 s.
func capSeconds(limit time.Duration, secs func(string) float64, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := secs(r.FormValue("seconds")); d > limit.Seconds() {
			http.Error(w, fmt.Sprintf("wsd: a %gs profile exceeds admin.max_profile_duration (%s)", d, limit), http.StatusBadRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// profileSeconds, traceSeconds and deltaSeconds mirror how
// net/http/pprof's Profile, Trace and named-profile handlers read
// seconds.
func profileSeconds(v string) float64 {
	if sec, err := strconv.ParseInt(v, 10, 64); err == nil && sec > 0 {
		return float64(sec)
	}
	return 30
}

func traceSeconds(v string) float64 {
	if sec, err := strconv.ParseFloat(v, 64); err == nil && sec > 0 {
		return sec
	}
	return 1
}

// deltaSeconds: an unparsable value is refused by the handler itself.
func deltaSeconds(v string) float64 {
	if sec, err := strconv.ParseInt(v, 10, 64); err == nil && sec > 0 {
		return float64(sec)
	}
	return 0
}
