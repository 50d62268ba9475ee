package service

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
)

// The panic net: every goroutine wsd runs on a path a peer drives (the
// read loop, write jobs, the upgrade handler) recovers a panic, closes
// only that connection through the normal close path, logs the stack and
// counts it (panics_total, wsd.panics). A peer must never be able to end
// the process: gws v1.8.9 panics on some inputs (see frameguard.go), and
// the next library bug should cost one connection, not every one.

// panicked logs and counts a recovered panic.
func (srv *Server) panicked(where string, v any, attrs ...slog.Attr) {
	srv.counters.panics.Add(1)
	attrs = append(attrs, slog.String("where", where), slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
	srv.log.LogAttrs(context.Background(), slog.LevelError, "panic recovered; closing the connection", attrs...)
}

// readLoop runs gws's read loop under the panic net: a panic closes the
// connection with 1011 (best effort) and releases it through finish,
// which gws's OnClose would otherwise have called.
func (s *session) readLoop() {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		s.srv.panicked("read", v, slog.Uint64("conn_id", s.id))
		err := fmt.Errorf("panic: %v", v)
		s.closeWith(CloseInternalError, reasonInternalError, err, 0)
		_ = s.nc.Close()
		s.finish(err)
	}()
	s.conn.ReadLoop()
}

// recoverWrite is deferred by every write job: a panic there closes the
// connection with 1011 and the write queue goes on (its remaining jobs
// fail fast on the closed connection).
func (s *session) recoverWrite() {
	if v := recover(); v != nil {
		s.srv.panicked("write", v, slog.Uint64("conn_id", s.id))
		s.closeWith(CloseInternalError, reasonInternalError, fmt.Errorf("panic: %v", v), 0)
	}
}

// recoverUpgrade is deferred by the upgrade handler once admission has
// reserved a slot: a panic releases what the upgrade held (undo, which
// reports whether the connection was hijacked) and answers 500 if it
// was not.
func (srv *Server) recoverUpgrade(w http.ResponseWriter, r *http.Request, undo func() (hijacked bool)) {
	v := recover()
	if v == nil {
		return
	}
	srv.panicked("upgrade", v, slog.String("remote", r.RemoteAddr))
	if !undo() {
		http.Error(w, "wsd: internal error", http.StatusInternalServerError)
	}
}
