package service

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"golang.org/x/sync/semaphore"
)

// The frame guard sits between the socket and gws: every byte a peer
// sends passes through frameGuard.Read, which parses the frame stream as
// it goes (headers, payload lengths, masks, fragmentation state, UTF-8
// of text messages, close payloads) and hands gws only bytes that are
// valid RFC 6455. gws (v1.8.9, the newest the module proxy serves) trusts
// what it reads in ways a hostile peer can exploit: a 64-bit length with
// the top bit set becomes a negative int that passes its size check and
// panics the process; a non-minimal length encoding is accepted; a frame
// header reserves the whole declared payload before a byte of it
// arrives; UTF-8 is checked only once a whole message is in; and its
// close frames (for a violation or in answer to the peer's close) are
// written at once, ahead of the echoes already queued, which loses them.
//
// On a violation the guard withholds the byte that completes it (the
// last byte of a bad header, the byte that makes UTF-8 invalid, the last
// byte of a close frame), so gws dispatches every message that came
// before and then blocks reading. Only then (gws reads on, it never has
// a dispatched message in hand at that point) does the guard end the
// session through its write queue: the close frame goes out after the
// writes already queued, so every message received before the
// violation is echoed first, and nothing after it (a ping, a message) is
// answered. No library does this for gws, hence a hand-written parser;
// it is fuzzed (FuzzFrames) and checked case by case (conformance_test.go).

// guardEnd is why the guard stopped the stream: a protocol violation
// (server close with code) or the peer's close frame.
type guardEnd struct {
	code   uint16 // violation: the close code to send
	reason string // violation: the close reason

	peerClose bool   // the peer sent a close frame
	peerCode  uint16 // its code; 0 for an empty payload
	peerText  []byte // its reason (nil for an empty payload)
	valid     bool   // the close frame passes RFC 6455 §7.4
}

// Close reasons for framing violations (RFC 6455 §5.2, §5.4, §5.5, §8.1).
const (
	reasonReservedBits   = "reserved bits set"
	reasonReservedOpcode = "reserved opcode"
	reasonUnmasked       = "unmasked client frame"
	reasonCtlFragmented  = "fragmented control frame"
	reasonCtlTooLong     = "control frame over 125 bytes"
	reasonNoStart        = "continuation without a start"
	reasonNotContinued   = "new message inside a fragmented one"
	reasonLengthTopBit   = "64-bit length with the top bit set"
	reasonLengthEncoding = "length not in its minimal encoding"
	reasonTooBig         = "message too big"
	reasonInvalidUTF8    = "invalid UTF-8 in a text message"
	reasonFrameTimeout   = "frame timeout"
)

// errGuardStopped ends gws's read loop once the guard has closed the
// session (gws has already been marked closed, so it sends nothing).
var errGuardStopped = errors.New("read stopped by the frame guard")

// partialReserveMin is the size above which a message still being
// received is counted against limits.max_partial_bytes. Smaller ones
// cost no more than the connection's read buffer.
const partialReserveMin = frameReadBuffer

// frameGuard validates the frame stream read from src; see the comment at
// the top of this file. It is used by one goroutine, gws's read loop. The
// zero value is not usable: see newFrameGuard.
type frameGuard struct {
	src  io.Reader
	sess *session // set before the read loop starts
	max  uint64   // limits.max_message_bytes

	hdr [14]byte // the header being parsed
	hn  int      // bytes of hdr received

	inFrame   bool   // a header is complete and payload bytes remain
	remaining uint64 // payload bytes left in the current frame
	op        byte   // the current frame's opcode
	fin       bool
	mask      [4]byte
	maskPos   uint64 // payload bytes of the current frame seen so far

	msgOp    byte   // opcode of the data message in progress; 0: none
	msgLen   uint64 // payload bytes declared so far in that message
	text     utf8Stream
	ctl      []byte // close frame payload (unmasked), collected
	reserved int64  // bytes held from the server's partial-message budget
	started  bool   // sess.msgStarted is set

	end     *guardEnd
	stopErr error
}

func newFrameGuard(src io.Reader, maxMessage int) *frameGuard {
	return &frameGuard{src: src, max: uint64(maxMessage)}
}

// Read implements io.Reader for gws's bufio.Reader.
func (g *frameGuard) Read(p []byte) (int, error) {
	if g.end != nil {
		return 0, g.stop()
	}
	if hook := g.sess.srv.testReadHook; hook != nil {
		hook(g.sess)
	}
	n, err := g.src.Read(p)
	if n == 0 {
		return 0, err
	}
	k := g.scan(p[:n])
	if g.end != nil {
		if k > 0 {
			return k, nil // the bytes before the violation; stop on the next Read
		}
		return 0, g.stop()
	}
	if aerr := g.account(); aerr != nil {
		return 0, aerr
	}
	return n, err
}

// scan parses b and returns how many of its bytes may go to gws: all of
// them, or, once g.end is set, those before the byte that ended the
// stream.
func (g *frameGuard) scan(b []byte) int {
	i := 0
	for i < len(b) {
		if !g.inFrame {
			j, ok := g.header(b, i)
			if !ok {
				return j
			}
			i = j
			continue
		}
		m := uint64(len(b) - i)
		if m > g.remaining {
			m = g.remaining
		}
		seg := b[i : i+int(m)]
		switch {
		case g.op == opText || g.op == opContinuation && g.msgOp == opText:
			if !g.checkText(seg) {
				g.violate(CloseInvalidPayload, reasonInvalidUTF8)
				return i
			}
		case g.op == opClose:
			start := len(g.ctl)
			g.ctl = append(g.ctl, seg...)
			unmask(g.ctl[start:], g.mask, g.maskPos)
		}
		g.maskPos += m
		g.remaining -= m
		i += int(m)
		if g.remaining == 0 {
			g.inFrame = false
			if !g.frameDone() {
				return i - 1 // withhold the frame's last byte
			}
		}
	}
	return i
}

// header consumes header bytes of b from i. It returns the index after
// them and true, or the index of the byte that completed a violation and
// false (g.end is set).
func (g *frameGuard) header(b []byte, i int) (int, bool) {
	for g.hn < 2 && i < len(b) {
		g.hdr[g.hn] = b[i]
		g.hn++
		i++
		if g.hn == 2 {
			if !g.checkStart() {
				return i - 1, false
			}
		}
	}
	if g.hn < 2 {
		return i, true
	}
	need := g.headerLen()
	c := copy(g.hdr[g.hn:need], b[i:])
	g.hn += c
	i += c
	if g.hn < need {
		return i, true
	}
	if !g.beginFrame() {
		return i - 1, false
	}
	if g.remaining == 0 {
		g.inFrame = false
		if !g.frameDone() {
			return i - 1, false
		}
	}
	return i, true
}

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// checkStart checks what the first two header bytes decide.
func (g *frameGuard) checkStart() bool {
	b0, b1 := g.hdr[0], g.hdr[1]
	op := b0 & 0x0f
	switch {
	case b0&0x70 != 0:
		// No extension is negotiated, so every RSV bit is reserved.
		return g.violate(CloseProtocolError, reasonReservedBits)
	case op > opBinary && op < opClose || op > opPong:
		return g.violate(CloseProtocolError, reasonReservedOpcode)
	case b1&0x80 == 0:
		return g.violate(CloseProtocolError, reasonUnmasked)
	case op >= opClose && b0&0x80 == 0:
		return g.violate(CloseProtocolError, reasonCtlFragmented)
	case op >= opClose && b1&0x7f > 125:
		return g.violate(CloseProtocolError, reasonCtlTooLong)
	case op == opContinuation && g.msgOp == 0:
		return g.violate(CloseProtocolError, reasonNoStart)
	case (op == opText || op == opBinary) && g.msgOp != 0:
		return g.violate(CloseProtocolError, reasonNotContinued)
	}
	return true
}

// headerLen is the header's full length once its first two bytes are in.
func (g *frameGuard) headerLen() int {
	switch g.hdr[1] & 0x7f {
	case 126:
		return 2 + 2 + 4
	case 127:
		return 2 + 8 + 4
	}
	return 2 + 4
}

// beginFrame checks the payload length of a complete header and starts
// the frame.
func (g *frameGuard) beginFrame() bool {
	var n uint64
	var key []byte
	switch l7 := g.hdr[1] & 0x7f; l7 {
	case 126:
		n = uint64(binary.BigEndian.Uint16(g.hdr[2:4]))
		if n < 126 {
			return g.violate(CloseProtocolError, reasonLengthEncoding)
		}
		key = g.hdr[4:8]
	case 127:
		n = binary.BigEndian.Uint64(g.hdr[2:10])
		if n>>63 != 0 {
			return g.violate(CloseProtocolError, reasonLengthTopBit)
		}
		if n <= 0xffff {
			return g.violate(CloseProtocolError, reasonLengthEncoding)
		}
		key = g.hdr[10:14]
	default:
		n = uint64(l7)
		key = g.hdr[2:6]
	}
	g.hn = 0
	g.op = g.hdr[0] & 0x0f
	g.fin = g.hdr[0]&0x80 != 0
	copy(g.mask[:], key)
	g.maskPos, g.remaining, g.inFrame = 0, n, true
	switch g.op {
	case opText, opBinary:
		g.msgOp, g.msgLen, g.text = g.op, 0, utf8Stream{}
		fallthrough
	case opContinuation:
		if n > g.max || g.msgLen+n > g.max {
			return g.violate(CloseMessageTooBig, reasonTooBig)
		}
		g.msgLen += n
	case opClose:
		g.ctl = make([]byte, 0, n)
	}
	return true
}

// frameDone runs when the current frame's last byte has been seen.
func (g *frameGuard) frameDone() bool {
	switch g.op {
	case opText, opBinary, opContinuation:
		if !g.fin {
			return true
		}
		if g.msgOp == opText && !g.text.complete() {
			return g.violate(CloseInvalidPayload, reasonInvalidUTF8)
		}
		g.msgOp, g.msgLen = 0, 0
		g.release()
	case opClose:
		e := &guardEnd{peerClose: true}
		switch len(g.ctl) {
		case 0:
			e.valid = true // an empty close frame
		case 1:
			// A 1-byte payload cannot hold a code (§5.5.1): logged as
			// that byte's value, answered 1002.
			e.peerCode, e.peerText = uint16(g.ctl[0]), []byte{}
		default:
			e.peerCode = binary.BigEndian.Uint16(g.ctl)
			e.peerText = g.ctl[2:]
			e.valid = ValidCloseCode(e.peerCode) && utf8.Valid(e.peerText)
		}
		g.ctl = nil
		g.end = e
		return false
	}
	return true
}

// checkText validates a masked segment of a text message's payload.
func (g *frameGuard) checkText(seg []byte) bool {
	var scratch [512]byte
	pos := g.maskPos
	for len(seg) > 0 {
		c := copy(scratch[:], seg)
		unmask(scratch[:c], g.mask, pos)
		if !g.text.feed(scratch[:c]) {
			return false
		}
		seg, pos = seg[c:], pos+uint64(c)
	}
	return true
}

func (g *frameGuard) violate(code uint16, reason string) bool {
	g.end = &guardEnd{code: code, reason: reason}
	return false
}

// account runs after each read that leaves a data message incomplete: it
// marks the message as started for limits.frame_timeout and holds its
// declared size from the server's budget for partial messages
// (limits.max_partial_bytes), waiting, not reading, while the budget is
// spent.
func (g *frameGuard) account() error {
	if g.msgOp == 0 {
		return nil
	}
	s := g.sess
	if !g.started {
		g.started = true
		s.msgStarted.Store(s.srv.now())
	}
	if g.msgLen <= partialReserveMin || int64(g.msgLen) <= g.reserved {
		return nil
	}
	need := int64(g.msgLen) - g.reserved
	if err := s.srv.partial.acquire(s, need); err != nil {
		// The session is closing while we waited: read away what the
		// peer sent (until its close or the linger deadline) so that
		// closing the socket does not reset the close frame away.
		drain(g.src)
		return err
	}
	g.reserved += need
	return nil
}

// release gives back what the finished message held.
func (g *frameGuard) release() {
	if g.started {
		g.started = false
		g.sess.msgStarted.Store(0)
	}
	if g.reserved > 0 {
		g.sess.srv.partial.release(g.reserved)
		g.reserved = 0
	}
}

// stop ends the session once, for the reason in g.end.
func (g *frameGuard) stop() error {
	if g.stopErr == nil {
		g.stopErr = g.sess.endByGuard(g.end, g.src)
	}
	return g.stopErr
}

// unmask XORs b, the payload bytes at offset pos of a frame, with key.
func unmask(b []byte, key [4]byte, pos uint64) {
	var k [4]byte
	for i := range k {
		k[i] = key[(pos+uint64(i))&3]
	}
	k8 := uint64(binary.LittleEndian.Uint32(k[:]))
	k8 |= k8 << 32
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k8)
		b = b[8:]
	}
	for i := range b {
		b[i] ^= k[i&3]
	}
}

// utf8Stream validates UTF-8 fed in pieces: a sequence split between two
// pieces is carried over, and a piece that makes the text invalid is
// reported at once, before the message ends. The zero value is an empty
// stream.
type utf8Stream struct {
	carry [utf8.UTFMax]byte
	n     int
}

// feed validates b, which follows the bytes fed before; it reports false
// as soon as the text cannot be valid UTF-8.
func (u *utf8Stream) feed(b []byte) bool {
	for u.n > 0 && len(b) > 0 {
		u.carry[u.n] = b[0]
		u.n++
		b = b[1:]
		if c := u.carry[:u.n]; utf8.FullRune(c) {
			// FullRune is also true for a prefix that is already invalid.
			if r, size := utf8.DecodeRune(c); r == utf8.RuneError && size <= 1 {
				return false
			}
			u.n = 0
		}
	}
	if len(b) == 0 {
		return true
	}
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i // a valid prefix of a sequence that continues
			}
			break
		}
	}
	if !utf8.Valid(b[:cut]) {
		return false
	}
	u.n = copy(u.carry[:], b[cut:])
	return true
}

// complete reports whether the text fed so far ends on a whole sequence.
func (u *utf8Stream) complete() bool { return u.n == 0 }

// partialBudget is the process-wide budget for data messages still being
// received (limits.max_partial_bytes). gws reserves a message's declared
// size as soon as its header is in; without a budget, thousands of peers
// that each send a header for a large frame and stall would pin that
// much memory each. The zero value is not usable: see newPartialBudget.
type partialBudget struct{ sem *semaphore.Weighted }

func newPartialBudget(n int64) *partialBudget { return &partialBudget{sem: semaphore.NewWeighted(n)} }

// acquire holds n bytes for s, waiting while the budget is spent (the
// connection is not read meanwhile, and limits.frame_timeout bounds the
// wait); it fails only when s is closing.
func (b *partialBudget) acquire(s *session, n int64) error {
	if b.sem.TryAcquire(n) {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.dying:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := b.sem.Acquire(ctx, n); err != nil {
		return fmt.Errorf("waiting for limits.max_partial_bytes: %w", err)
	}
	return nil
}

func (b *partialBudget) release(n int64) { b.sem.Release(n) }
