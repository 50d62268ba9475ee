package service

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Read buffers are borrowed, not owned. gws reads frames from a
// *bufio.Reader that a connection keeps for its whole life, and a read
// loop parked on an idle connection pins that reader's buffer: 4 KiB per
// idle connection, the largest item of its memory. wsd gives gws a small
// bufio.Reader (frameHeadBuffer: frame headers and small messages) over a
// borrowingReader, which takes a frameReadBuffer from a pool only while
// bytes are arriving: it first reads whatever the socket already holds
// without waiting, and only when the socket is empty does it wait, with
// no pooled buffer held. No library offers this for gws (its reader is
// fixed-size by design; event-driven servers such as nbio avoid the
// parked goroutine altogether), hence this file.

// frameReadBuffer is the size of the pooled read buffers (gws's default
// read buffer size).
const frameReadBuffer = 4 << 10

// frameHeadBuffer is the per-connection bufio.Reader's size: a frame
// header (at most 14 bytes) and small messages are read through it.
const frameHeadBuffer = 128

var readBufPool = sync.Pool{New: func() any { return new([frameReadBuffer]byte) }}

// borrowingReader reads a TCP connection through a pooled buffer that it
// holds only while the buffer has unread bytes. The zero value is not
// usable: see frameReader.
type borrowingReader struct {
	conn net.Conn
	raw  syscall.RawConn        // nil: the socket is not a syscall.Conn, plain reads
	buf  *[frameReadBuffer]byte // nil while idle
	r, w int                    // unread bytes are buf[r:w]

	// tryRead is the RawConn callback, built once so a read allocates
	// nothing. It borrows a buffer and reads into it without waiting;
	// if the socket is empty it gives the buffer back and returns false,
	// and RawConn.Read waits for readability holding no buffer, then
	// calls it again: the same two read(2) calls as net.Conn.Read.
	tryRead func(fd uintptr) bool
	readErr error // tryRead's failure; nil with no buffer: end of stream
}

// Read implements io.Reader for the bufio.Reader gws reads from.
func (b *borrowingReader) Read(p []byte) (int, error) {
	if b.buf != nil {
		return b.copyOut(p), nil
	}
	if b.raw == nil || len(p) >= frameReadBuffer {
		// A large read (the rest of a big payload) goes straight into
		// the caller's buffer, as bufio.Reader itself does.
		return b.conn.Read(p)
	}
	b.readErr = nil
	if err := b.raw.Read(b.tryRead); err != nil {
		// Closed, or past a read deadline (the close linger): let net
		// report it in its usual form.
		return b.conn.Read(p)
	}
	switch {
	case b.buf != nil:
		return b.copyOut(p), nil
	case b.readErr == nil:
		return 0, io.EOF
	default:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: b.conn.LocalAddr(), Addr: b.conn.RemoteAddr(),
			Err: os.NewSyscallError("read", b.readErr)}
	}
}

func (b *borrowingReader) try(fd uintptr) bool {
	buf := readBufPool.Get().(*[frameReadBuffer]byte)
	for {
		n, err := syscall.Read(int(fd), buf[:])
		if err == syscall.EINTR {
			continue
		}
		if n > 0 {
			b.buf, b.r, b.w = buf, 0, n
			return true
		}
		readBufPool.Put(buf)
		if err == syscall.EAGAIN {
			return false
		}
		b.readErr = err
		return true
	}
}

// copyOut moves buffered bytes to p and returns the buffer to the pool
// once it is drained.
func (b *borrowingReader) copyOut(p []byte) int {
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	if b.r == b.w {
		readBufPool.Put(b.buf)
		b.buf, b.r, b.w = nil, 0, 0
	}
	return n
}

// newBorrowingReader returns a borrowingReader on nc's socket that first
// yields the bytes buffered in hr. gws reads it through the frame guard
// and a small bufio.Reader (frameHeadBuffer).
//
// net/http's reader is not kept: it reads through net/http's
// per-connection state (a mutex and bookkeeping on every read) and keeps
// that state alive for the life of the WebSocket. A client may have sent
// its first frames together with the upgrade request; those bytes,
// already in net/http's buffer, are read first.
//
// Reads bypass trackedConn (it only counts Close): an extra call frame
// on the read path pushed the stack of every idle read loop, parked in
// that call, from 2 KiB to 4 KiB.
func newBorrowingReader(nc net.Conn, hr *bufio.Reader) io.Reader {
	if tc, ok := nc.(*trackedConn); ok {
		nc = tc.Conn
	}
	b := &borrowingReader{conn: nc}
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			b.raw = raw
		}
	}
	b.tryRead = b.try
	if n := hr.Buffered(); n > 0 {
		early, _ := hr.Peek(n) // cannot fail: n bytes are buffered
		if n > frameReadBuffer {
			// net/http's reader is 4 KiB, so this does not happen today;
			// it keeps the early bytes whole if that ever changes.
			return io.MultiReader(bytes.NewReader(bytes.Clone(early)), b)
		}
		b.buf = readBufPool.Get().(*[frameReadBuffer]byte)
		b.w = copy(b.buf[:], early)
	}
	return b
}
