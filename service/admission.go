package service

import (
	"encoding/base64"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// admission decides, before the WebSocket handshake, whether an upgrade
// request may proceed. Every refusal is an HTTP status, never a hang:
// a client learns why and when to retry.
type admission struct {
	cfg     *LimitsConfig
	fd      *fdGuard
	origins map[string]bool // normalised scheme://host[:port]; nil: any
	limiter *rate.Limiter

	draining atomic.Bool
	conns    atomic.Int64 // reserved + upgraded connections

	ipMu  sync.Mutex
	perIP map[netip.Addr]int

	userMu  sync.Mutex
	perUser map[string]int // only with limits.max_connections_per_user
}

func newAdmission(cfg *LimitsConfig, fd *fdGuard) *admission {
	a := &admission{
		cfg:     cfg,
		fd:      fd,
		limiter: rate.NewLimiter(rate.Limit(cfg.UpgradeRate), cfg.UpgradeBurst),
		perIP:   make(map[netip.Addr]int),
		perUser: make(map[string]int),
	}
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			return a // any origin
		}
		if a.origins == nil {
			a.origins = make(map[string]bool)
		}
		a.origins[normaliseOrigin(o)] = true
	}
	return a
}

// rejection is a refused upgrade: its reason and HTTP answer.
type rejection struct {
	reason     RejectReason
	status     int
	retryAfter time.Duration // 0: no Retry-After header
	wwwAuth    string        // WWW-Authenticate value (RFC 6750 §3); "": none
	msg        string
}

// write answers the request. Retry-After is in whole seconds, rounded up.
func (r *rejection) write(w http.ResponseWriter) {
	if r.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(r.retryAfter.Seconds()))))
	}
	if r.wwwAuth != "" {
		w.Header().Set("WWW-Authenticate", r.wwwAuth)
	}
	if r.reason == RejectBadRequest {
		w.Header().Set("Sec-WebSocket-Version", "13")
	}
	w.Header().Set("Connection", "close")
	http.Error(w, "wsd: "+r.msg, r.status)
}

// checkRequest validates a WebSocket upgrade request (RFC 6455 §4.2.1).
// Beyond the RFC's list it refuses what a proxy in front of wsd could
// read differently from wsd: a request body (the proxy would forward it
// as the request's body, wsd would parse it as WebSocket frames: request
// smuggling) and repeated Sec-WebSocket-Key or -Version headers (which
// one counts is up to each reader).
func checkRequest(r *http.Request) *rejection {
	bad := func(msg string) *rejection {
		return &rejection{reason: RejectBadRequest, status: http.StatusBadRequest, msg: msg}
	}
	switch {
	case r.Method != http.MethodGet:
		return bad("websocket upgrade requires GET")
	case !r.ProtoAtLeast(1, 1):
		return bad("websocket upgrade requires HTTP/1.1")
	case r.ContentLength != 0 || len(r.TransferEncoding) > 0:
		return bad("websocket upgrade request must not have a body")
	case !headerHasToken(r.Header, "Connection", "upgrade"):
		return bad("not a websocket upgrade: Connection header lacks upgrade")
	case !headerHasToken(r.Header, "Upgrade", "websocket"):
		return bad("not a websocket upgrade: Upgrade header lacks websocket")
	case len(r.Header.Values("Sec-WebSocket-Version")) > 1:
		return bad("more than one Sec-WebSocket-Version header")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		return bad("unsupported Sec-WebSocket-Version (want 13)")
	case len(r.Header.Values("Sec-WebSocket-Key")) > 1:
		return bad("more than one Sec-WebSocket-Key header")
	case !validKey(r.Header.Get("Sec-WebSocket-Key")):
		return bad("missing or malformed Sec-WebSocket-Key (want base64 of 16 bytes)")
	}
	return nil
}

// validKey: the key is the base64 encoding of 16 bytes (24 characters,
// canonical padding), as RFC 6455 §4.1 requires of the client.
func validKey(k string) bool {
	if len(k) != 24 {
		return false
	}
	var b [18]byte
	n, err := base64.StdEncoding.Strict().Decode(b[:], []byte(k))
	return err == nil && n == 16
}

// normaliseUpgradeHeaders rewrites Connection and Upgrade, which
// checkRequest accepted as token lists over any number of header lines
// (RFC 9110 §5.3), to the single values gws reads: gws looks at the
// first line only, and wants Upgrade to be exactly "websocket".
func normaliseUpgradeHeaders(h http.Header) {
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// checkOrigin refuses browsers from origins not listed. A request with no
// Origin header is not from a browser and is not subject to cross-site
// hijacking, so it passes.
func (a *admission) checkOrigin(r *http.Request) *rejection {
	o := r.Header.Get("Origin")
	if a.origins == nil || o == "" || a.origins[normaliseOrigin(o)] {
		return nil
	}
	return &rejection{reason: RejectOrigin, status: http.StatusForbidden, msg: "origin not allowed"}
}

func normaliseOrigin(o string) string {
	u, err := url.Parse(strings.TrimSpace(o))
	if err != nil {
		return o
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host)
}

// reserve claims a connection slot for ip, checking every capacity limit
// in order of cost. On success the caller must call release exactly once
// (when the session ends, or at once if the handshake fails).
func (a *admission) reserve(ip netip.Addr) *rejection {
	if a.draining.Load() {
		return &rejection{reason: RejectDraining, status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: "server is shutting down"}
	}
	if a.fd.underPressure() {
		return &rejection{reason: RejectFDPressure, status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: "server is near its descriptor limit"}
	}
	if n := a.conns.Add(1); n > int64(a.cfg.MaxConnections) {
		a.conns.Add(-1)
		return &rejection{reason: RejectMaxConnections, status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: "server is at its connection limit"}
	}
	a.ipMu.Lock()
	if a.perIP[ip] >= a.cfg.MaxConnectionsPerIP {
		a.ipMu.Unlock()
		a.conns.Add(-1)
		return &rejection{reason: RejectPerIP, status: http.StatusTooManyRequests, msg: "too many connections from your address"}
	}
	a.perIP[ip]++
	a.ipMu.Unlock()
	// The rate is checked last so that requests refused for another
	// reason do not spend tokens.
	if res := a.limiter.Reserve(); !res.OK() || res.Delay() > 0 {
		delay := time.Second
		if res.OK() {
			delay = res.Delay()
			res.Cancel()
		}
		a.release(ip)
		return &rejection{reason: RejectRate, status: http.StatusTooManyRequests, retryAfter: delay, msg: "upgrade rate exceeded"}
	}
	return nil
}

// release frees a slot claimed by reserve.
func (a *admission) release(ip netip.Addr) {
	a.conns.Add(-1)
	a.ipMu.Lock()
	if n := a.perIP[ip] - 1; n > 0 {
		a.perIP[ip] = n
	} else {
		delete(a.perIP, ip)
	}
	a.ipMu.Unlock()
}

// ipEntries returns the size of the per-IP table (0 when idle: no leak).
func (a *admission) ipEntries() int {
	a.ipMu.Lock()
	defer a.ipMu.Unlock()
	return len(a.perIP)
}

// reserveUser claims one of user's max_connections_per_user slots; it
// admits everyone when the cap is off or the user is "" (auth.mode
// none). On success the caller must call releaseUser exactly once.
func (a *admission) reserveUser(user string) *rejection {
	if a.cfg.MaxConnectionsPerUser <= 0 || user == "" {
		return nil
	}
	a.userMu.Lock()
	defer a.userMu.Unlock()
	if a.perUser[user] >= a.cfg.MaxConnectionsPerUser {
		return &rejection{reason: RejectPerUser, status: http.StatusTooManyRequests, msg: "too many connections for your user"}
	}
	a.perUser[user]++
	return nil
}

// releaseUser frees a slot claimed by reserveUser.
func (a *admission) releaseUser(user string) {
	if a.cfg.MaxConnectionsPerUser <= 0 || user == "" {
		return
	}
	a.userMu.Lock()
	if n := a.perUser[user] - 1; n > 0 {
		a.perUser[user] = n
	} else {
		delete(a.perUser, user)
	}
	a.userMu.Unlock()
}

// userEntries returns the size of the per-user table (0 when idle).
func (a *admission) userEntries() int {
	a.userMu.Lock()
	defer a.userMu.Unlock()
	return len(a.perUser)
}
