// Package service is the wsd WebSocket server: echo and topic fan-out
// endpoints on github.com/lxzan/gws, with backpressure and hysteresis,
// heartbeats, admission caps, descriptor protection, RFC 6455 close
// handling and graceful shutdown. Every protection is a field of Config.
package service

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"golang.org/x/time/rate"
)

// Server is a wsd server. Create it with New, run it with Serve; the zero
// value is not usable.
type Server struct {
	cfg Config
	log *slog.Logger
	obs Observer
	bus Bus
	// publish or, when the Bus implements ContextPublisher, ctxPublish.
	publish    func(topic string, from Subscriber, opcode gws.Opcode, payload []byte)
	ctxPublish func(ctx context.Context, topic string, from Subscriber, opcode gws.Opcode, payload []byte)
	admin      map[string]http.Handler
	upgrader   *gws.Upgrader

	auth     *authenticator // nil: auth.mode none
	fd       *fdGuard
	adm      *admission
	sessions *registry
	load     loadCounters
	counters struct {
		echo, topic                      atomic.Int64
		dropped, evicted                 atomic.Int64
		heartbeatTimeouts, writeTimeouts atomic.Int64
		frameTimeouts, panics            atomic.Int64
	}
	clock    atomic.Int64 // coarse time, advanced by housekeeping
	nextID   atomic.Uint64
	wg       sync.WaitGroup // one per live session
	partial  *partialBudget
	testHook func(*session, *gws.Message)
	// testReadHook runs on every read of the frame guard (tests inject
	// panics into the read path with it).
	testReadHook func(*session)

	ready     chan struct{}
	publicLn  *guardedListener
	adminLn   *guardedListener
	publicSrv *http.Server
	adminSrv  *http.Server
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger (default slog.Default()). Session lines are
// logged with the context the Observer returns, so a trace-aware handler
// adds trace_id and span_id.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithObserver sets the telemetry observer (default: none).
func WithObserver(o Observer) Option { return func(s *Server) { s.obs = o } }

// WithBus replaces the in-process topic Hub, e.g. with a broker-backed
// Bus shared by replicas (natsbus). The Server does not close it: its
// creator does, after Serve returned (every session has unsubscribed by
// then).
func WithBus(b Bus) Option { return func(s *Server) { s.bus = b } }

// WithAdminHandler mounts h on the admin listener at pattern (e.g.
// "/metrics").
func WithAdminHandler(pattern string, h http.Handler) Option {
	return func(s *Server) { s.admin[pattern] = h }
}

// New validates cfg and returns a Server that is not yet listening.
// It fails when cfg is invalid; the error names every bad key.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	s := &Server{cfg: cfg, log: slog.Default(), obs: nopObserver{}, admin: map[string]http.Handler{}, ready: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	if s.obs == nil {
		s.obs = nopObserver{}
	}
	if s.bus == nil {
		s.bus = NewHub()
	}
	s.publish = s.bus.Publish
	if cp, ok := s.bus.(ContextPublisher); ok {
		s.ctxPublish = cp.PublishContext
	}
	auth, err := newAuthenticator(cfg.Auth)
	if err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	s.auth = auth
	s.fd = newFDGuard(cfg.Limits.FDHeadroom)
	s.adm = newAdmission(&s.cfg.Limits, s.fd)
	s.sessions = newRegistry()
	s.partial = newPartialBudget(cfg.Limits.MaxPartialBytes)
	s.clock.Store(time.Now().UnixNano())
	s.upgrader = gws.NewUpgrader(handler{srv: s}, &gws.ServerOption{
		ReadMaxPayloadSize:  cfg.Limits.MaxMessageBytes,
		WriteMaxPayloadSize: cfg.Limits.MaxMessageBytes,
		// The frame guard validates UTF-8 as text arrives (and fails
		// fast); gws checking again on read and on every echo write
		// would only cost CPU.
		CheckUtf8Enabled: false,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout,
		Logger:           gwsLogger{s.log},
		// Each connection gets its own storage slot, set before ReadLoop.
		NewSession: func() gws.SessionStorage { return &sessionSlot{} },
	})
	return s, nil
}

func (s *Server) now() int64 { return s.clock.Load() }

// Serve listens on cfg.Listen and cfg.AdminListen and serves until ctx is
// cancelled, then shuts down gracefully (see Shutdown in the README): it
// returns nil after a clean drain, or the error that stopped a listener.
// It fails at once when a listener cannot be opened (address in use,
// permission) or, with auth.jwt.jwks_url, when the JWK Set cannot be
// fetched or holds no usable key. Call it once per Server.
func (s *Server) Serve(ctx context.Context) error {
	if s.auth != nil && s.cfg.Auth.JWT.JWKSURL != "" {
		// The refresh goroutine lives exactly as long as Serve.
		jctx, stopJWKS := context.WithCancel(context.Background())
		defer stopJWKS()
		if err := s.auth.startJWKS(jctx, s.log); err != nil {
			return err
		}
	}
	pl, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	al, err := net.Listen("tcp", s.cfg.AdminListen)
	if err != nil {
		_ = pl.Close()
		return fmt.Errorf("admin listen %s: %w", s.cfg.AdminListen, err)
	}
	s.publicLn = newGuardedListener(pl, s.fd, s.cfg.Limits.MaxHandshakes, s.log, s.obs.AcceptError)
	s.adminLn = newGuardedListener(al, nil, 0, s.log, s.obs.AcceptError)
	s.publicLn.pressure, s.adminLn.pressure = s.fd, s.fd
	s.adminLn.maxConns = int64(s.cfg.Admin.MaxConnections)

	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	hs := s.cfg.Limits.HandshakeTimeout
	s.publicSrv = &http.Server{
		Handler:           s.publicHandler(),
		ReadHeaderTimeout: hs, // slowloris: headers must arrive in time
		IdleTimeout:       hs, // keep-alive conns that never upgrade
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          errLog,
		// "OPTIONS *" would get net/http's own 200: every answer
		// here is an upgrade or an error (publicHandler).
		DisableGeneralOptionsHandler: true,
	}
	s.adminSrv = &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          errLog,
	}

	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); s.housekeeping(stop) }()
	errc := make(chan error, 2)
	go func() { defer bg.Done(); errc <- serveErr(s.publicSrv.Serve(s.publicLn)) }()
	go func() { defer bg.Done(); errc <- serveErr(s.adminSrv.Serve(s.adminLn)) }()
	close(s.ready)
	s.log.Info("wsd listening", "public", s.Addr().String(), "admin", s.AdminAddr().String(),
		"fd_limit", s.fd.limit, "fd_soft", s.fd.soft, "fd_hard", s.fd.hard)

	var serveError error
	select {
	case <-ctx.Done():
	case serveError = <-errc:
	}
	s.shutdown()
	close(stop)
	bg.Wait()
	s.publicLn.closeSpare()
	s.adminLn.closeSpare()
	return serveError
}

func serveErr(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Ready is closed once both listeners accept connections.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the public listener's address. Call it only once Ready
// is closed.
func (s *Server) Addr() net.Addr { return s.publicLn.Addr() }

// AdminAddr returns the admin listener's address. Call it only once
// Ready is closed.
func (s *Server) AdminAddr() net.Addr { return s.adminLn.Addr() }

// shutdown: readiness off and upgrades refused, listeners closed, 1001
// queued to every session behind its pending writes, then up to
// drain_timeout for sessions to end before the rest are force-closed.
func (s *Server) shutdown() {
	s.adm.draining.Store(true)
	drain := s.cfg.Shutdown.DrainTimeout
	s.log.Info("draining", "connections", s.sessions.len(), "drain_timeout", drain)
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	httpDone := make(chan struct{})
	go func() { defer close(httpDone); s.stopPublic(ctx) }()

	var buf []*session
	buf = s.sessions.each(buf, (*session).goAway)
	// Upgrades already past admission register (and get 1001 at once)
	// until stopPublic returns; only then has every wg.Add happened, so
	// only then may wg.Wait start. Sessions drain meanwhile.
	<-httpDone
	_ = s.publicSrv.Close()
	drained := make(chan struct{})
	go func() { s.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		left := s.sessions.len()
		s.log.Warn("drain timeout: force-closing remaining connections", "connections", left)
		s.sessions.each(buf, func(ss *session) { ss.abort(reasonForcedShutdown, nil) })
		<-drained // abort closes sockets: every read loop ends promptly
	}
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	_ = s.adminSrv.Shutdown(actx)
	s.log.Info("shutdown complete")
}

// stopPublic stops accepting and closes idle keep-alive connections,
// then gives requests already on the wire up to handshake_timeout to be
// answered (503 draining) before shutting the HTTP server down: once
// http.Server.Shutdown has begun, net/http drops without any response
// every request it finishes reading, so calling it first would leave
// such clients with a bare EOF.
func (s *Server) stopPublic(ctx context.Context) {
	_ = s.publicLn.Close()
	s.publicSrv.SetKeepAlivesEnabled(false)
	grace, cancel := context.WithTimeout(ctx, s.cfg.Limits.HandshakeTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.publicLn.handshakes.Load() > 0 && grace.Err() == nil {
		select {
		case <-grace.Done():
		case <-tick.C:
		}
	}
	_ = s.publicSrv.Shutdown(ctx)
}

// publicHandler routes the WebSocket endpoints. It routes by hand rather
// than with a ServeMux: a mux answers a path with . or .. segments with
// a redirect to the cleaned path (a 307 that a WebSocket client cannot
// follow, hiding the real error), yet passes /ws/topics/%2e%2e to the
// handler decoded as "..". Here every request is an upgrade, a 400 or a
// 404.
func (s *Server) publicHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == "/ws/echo" && r.URL.EscapedPath() == p:
			s.upgrade(w, r, EndpointEcho, "")
		case strings.HasPrefix(p, topicPrefix):
			topic, ok := requestTopic(r)
			if !ok {
				s.reject(w, r, &rejection{reason: RejectBadRequest, status: http.StatusBadRequest,
					msg: "topic must be 1-128 characters of [A-Za-z0-9._-], not . or .., and not percent-encoded"})
				return
			}
			s.upgrade(w, r, EndpointTopic, topic)
		default:
			http.NotFound(w, r)
		}
	})
}

const topicPrefix = "/ws/topics/"

// requestTopic returns the topic named by a /ws/topics/ request. The
// topic is checked in its decoded form and must be spelled the same in
// the raw request target: a valid topic needs no escaping, so an escaped
// spelling (%2e%2e for .., %61 for a) is refused rather than decoded
// into a name (or a path segment) the client did not write.
func requestTopic(r *http.Request) (string, bool) {
	topic, ok := strings.CutPrefix(r.URL.Path, topicPrefix)
	raw, rawOK := strings.CutPrefix(r.URL.EscapedPath(), topicPrefix)
	return topic, ok && rawOK && raw == topic && ValidTopic(topic)
}

func (s *Server) reject(w http.ResponseWriter, r *http.Request, rej *rejection) {
	s.obs.UpgradeRejected(r.Context(), r, rej.reason)
	s.log.LogAttrs(r.Context(), slog.LevelDebug, "upgrade rejected", slog.String("reason", string(rej.reason)),
		slog.Int("status", rej.status), slog.String("remote", r.RemoteAddr))
	rej.write(w)
}

// upgrade admits, upgrades and registers one connection.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request, ep Endpoint, topic string) {
	if rej := checkRequest(r); rej != nil {
		s.reject(w, r, rej)
		return
	}
	if rej := s.adm.checkOrigin(r); rej != nil {
		s.reject(w, r, rej)
		return
	}
	// Tokens are checked before any slot is claimed: a bad token costs
	// one signature check and holds nothing.
	var id identity
	if s.auth != nil {
		var rej *rejection
		if id, rej = s.authenticate(r, ep, topic); rej != nil {
			s.reject(w, r, rej)
			return
		}
	}
	if rej := s.adm.reserveUser(id.user); rej != nil {
		s.reject(w, r, rej)
		return
	}
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	ip := remote.Addr().Unmap()
	if rej := s.adm.reserve(ip); rej != nil {
		s.adm.releaseUser(id.user)
		s.reject(w, r, rej)
		return
	}
	release := func() {
		s.adm.release(ip)
		s.adm.releaseUser(id.user)
	}
	var nc net.Conn
	var sess *session
	defer s.recoverUpgrade(w, r, func() (hijacked bool) {
		switch {
		case sess != nil && sess.registered:
			sess.abort(reasonInternalError, nil)
			sess.finish(errors.New("panic during upgrade"))
		case nc != nil:
			_ = nc.Close()
			release()
		default:
			release()
		}
		return nc != nil
	})
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		release()
		http.Error(w, "wsd: upgrade failed", http.StatusInternalServerError)
		return
	}
	_ = nc.SetDeadline(time.Time{}) // net/http's header deadline no longer applies
	normaliseUpgradeHeaders(r.Header)
	gc := &gwsConn{Conn: nc}
	guard := newFrameGuard(newBorrowingReader(nc, brw.Reader), s.cfg.Limits.MaxMessageBytes)
	conn, err := s.upgrader.UpgradeFromConn(gc, bufio.NewReaderSize(guard, frameHeadBuffer), r)
	if err != nil {
		release() // gws answered 400 and closed the socket
		s.obs.UpgradeRejected(r.Context(), r, RejectBadRequest)
		return
	}
	sess = &session{
		srv: s, id: s.nextID.Add(1), endpoint: ep, topic: topic, remote: remote,
		conn: conn, nc: nc, gc: gc, opened: time.Now(), dying: make(chan struct{}),
		buf: newSendBuffer(&s.cfg.Backpressure, &s.load, &s.clock), guard: guard,
		user: id.user, canPublish: s.auth == nil || matchTopic(id.rights.Pub, topic),
	}
	if !id.expires.IsZero() {
		sess.expires = id.expires.UnixNano()
	}
	guard.sess = sess
	if lim := s.cfg.Limits; lim.MessageRate > 0 {
		sess.limiter = rate.NewLimiter(rate.Limit(lim.MessageRate), lim.MessageBurst)
	}
	sess.lastSeen.Store(s.now())
	sess.lastPing.Store(s.now() - firstPingJitter(s.cfg.Heartbeat.PingInterval))
	// The session's context starts empty, not from r.Context(): that
	// chain (net/http's per-connection and per-request contexts) would
	// stay reachable for the life of the WebSocket, ~360 B per idle
	// connection, for values nothing reads (the Observer gets r itself).
	sess.ctx, sess.obs = s.obs.SessionOpened(context.Background(), SessionInfo{
		ID: sess.id, Endpoint: ep, Topic: topic, Remote: remote, Request: r, User: id.user,
	})
	conn.Session().Store("session", sess)

	s.register(sess)
	if s.adm.draining.Load() {
		sess.goAway() // shutdown began while we were upgrading
	}
	// Leaving the handshake count only now lets shutdown's stopPublic,
	// which waits for it to reach zero, know every session is registered.
	if tc, ok := nc.(*trackedConn); ok {
		tc.upgraded()
	}
	s.log.LogAttrs(sess.ctx, slog.LevelDebug, "connection opened", slog.Uint64("conn_id", sess.id),
		slog.String("remote", r.RemoteAddr), slog.String("endpoint", string(ep)))
	go sess.readLoop()
}

func (s *Server) register(sess *session) {
	sess.registered = true
	s.wg.Add(1)
	s.sessions.add(sess)
	s.endpointCounter(sess.endpoint).Add(1)
	if sess.endpoint == EndpointTopic {
		sess.unsub = s.bus.Subscribe(sess.topic, sess)
	}
}

// unregister removes a session from every registry; called once, from
// session.finish, which then calls s.wg.Done as its very last step.
func (s *Server) unregister(sess *session) {
	if sess.unsub != nil {
		sess.unsub()
	}
	s.sessions.remove(sess)
	s.endpointCounter(sess.endpoint).Add(-1)
	s.adm.release(sess.remote.Addr().Unmap())
	s.adm.releaseUser(sess.user)
}

func (s *Server) endpointCounter(ep Endpoint) *atomic.Int64 {
	if ep == EndpointTopic {
		return &s.counters.topic
	}
	return &s.counters.echo
}

// gwsLogger routes gws's own log lines to slog.
type gwsLogger struct{ l *slog.Logger }

func (g gwsLogger) Error(v ...any) { g.l.Error("gws", "msg", fmt.Sprint(v...)) }
