package service

import (
	"sync"
	"sync/atomic"
	"time"
)

// gws queues writes in an unbounded per-connection queue and keeps no
// count of what is waiting, so wsd counts it here: bytes are added when a
// message is accepted for sending and subtracted when its write to the
// socket completes (or fails). Hysteresis: reading pauses at pause_bytes
// and resumes only below resume_bytes, so a connection hovering between
// the two does not flap.

// transition is a set of backpressure events produced by one change of a
// send buffer; they are reported outside the buffer's lock.
type transition uint8

const (
	transWarn transition = 1 << iota
	transPause
	transResume
)

// offer is the verdict on a fan-out message for one subscriber.
type offer uint8

const (
	offerAccept offer = iota // queued
	offerDrop                // discarded (drop policy), counted
	offerEvict               // over max_bytes under the close policy
)

// loadCounters are the process-wide sums the /debug/stats endpoint and
// the gauges read. They must be exact: the chaos suite compares them to
// a baseline after every scenario.
type loadCounters struct {
	buffered atomic.Int64
	paused   atomic.Int64
}

// sendBuffer tracks one connection's unsent bytes and its backpressure
// state, and feeds the write watchdog (see stalled). The zero value is
// not usable: see newSendBuffer.
type sendBuffer struct {
	cfg    *BackpressureConfig
	totals *loadCounters
	clock  *atomic.Int64 // the server's coarse clock (unix nanos)

	mu       sync.Mutex
	bytes    int64
	control  int   // control frames queued, not yet written
	progress int64 // clock at the last completed write, or when writes became pending
	warned   bool  // a warn episode is under way
	paused   bool  // reading is paused
	// pausedFlag mirrors paused (written under mu) for isPaused: the
	// read loop checks it per message and the sweep per connection,
	// neither taking the lock.
	pausedFlag atomic.Bool
	dropping   bool          // drop policy: discarding until drained
	closed     bool          // session ended: totals no longer include us
	since      time.Time     // when the pause began
	resume     chan struct{} // closed when the pause ends
}

func newSendBuffer(cfg *BackpressureConfig, totals *loadCounters, clock *atomic.Int64) *sendBuffer {
	return &sendBuffer{cfg: cfg, totals: totals, clock: clock}
}

// add counts n bytes accepted for sending. It never refuses: the echo
// path is lossless and bounds memory by pausing its reader instead.
func (b *sendBuffer) add(n int64) (transition, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addLocked(n), b.bytes
}

// offerFanout decides whether a fan-out message of n bytes is queued for
// this subscriber. Above max_bytes the subscriber is a slow consumer:
// under the drop policy messages are discarded until the buffer drains
// below resume_bytes; under the close policy the caller evicts it.
func (b *sendBuffer) offerFanout(n int64) (offer, transition, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return offerDrop, 0, b.bytes
	}
	if b.dropping || b.bytes+n > b.cfg.MaxBytes {
		if b.cfg.SlowConsumer == SlowConsumerDrop {
			b.dropping = true
			return offerDrop, 0, b.bytes
		}
		return offerEvict, 0, b.bytes
	}
	return offerAccept, b.addLocked(n), b.bytes
}

func (b *sendBuffer) addLocked(n int64) transition {
	b.startWindowLocked()
	b.bytes += n
	if !b.closed {
		b.totals.buffered.Add(n)
	}
	var t transition
	if !b.warned && b.bytes >= b.cfg.WarnBytes {
		b.warned = true
		t |= transWarn
	}
	if !b.paused && b.bytes >= b.cfg.PauseBytes {
		b.paused = true
		b.pausedFlag.Store(true)
		b.since = time.Now()
		b.resume = make(chan struct{})
		if !b.closed {
			b.totals.paused.Add(1)
		}
		t |= transPause
	}
	return t
}

// done subtracts n bytes whose write completed or failed. It returns the
// transitions and the buffered amount before the subtraction.
func (b *sendBuffer) done(n int64) (transition, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	before := b.bytes
	b.bytes -= n
	b.progress = b.clock.Load()
	if !b.closed {
		b.totals.buffered.Add(-n)
	}
	var t transition
	if b.paused && b.bytes < b.cfg.ResumeBytes {
		b.endPauseLocked()
		t |= transResume
	}
	if b.dropping && b.bytes < b.cfg.ResumeBytes {
		b.dropping = false
	}
	// A warn episode ends once the buffer has drained well below the
	// warn level, so a connection hovering at it logs once, not per message.
	if b.warned && b.bytes < b.cfg.WarnBytes/2 {
		b.warned = false
	}
	return t, before
}

func (b *sendBuffer) endPauseLocked() {
	b.paused = false
	b.pausedFlag.Store(false)
	close(b.resume)
	b.resume = nil
	if !b.closed {
		b.totals.paused.Add(-1)
	}
}

// The write watchdog. A gws write blocks until the kernel takes the
// bytes, so a peer that stops reading with a full TCP window holds one
// write, and every write queued behind it, forever. Rather than a socket
// write deadline per frame (a timer update and a clock read per message,
// measurable on the echo path), the housekeeping sweep closes a
// connection that has had writes pending with none completing for
// write_timeout. The clock is read under the same lock that makes writes
// pending, so a sweep never sees pending writes with a stale window.
// Frames from the peer (pings included) are not progress: a client that
// pings but never reads is still closed.

// startWindowLocked starts the watchdog's window when writes become
// pending.
func (b *sendBuffer) startWindowLocked() {
	if b.bytes == 0 && b.control == 0 {
		b.progress = b.clock.Load()
	}
}

// addControl counts a queued control frame (ping, pong) for the watchdog;
// control frames are not send-buffer bytes.
func (b *sendBuffer) addControl() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.startWindowLocked()
	b.control++
}

// doneControl counts a control frame write that finished; a successful
// one is progress.
func (b *sendBuffer) doneControl(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.control--
	if ok {
		b.progress = b.clock.Load()
	}
}

// stalled reports whether writes have been pending, with none
// completing, for longer than write_timeout at clock reading now.
func (b *sendBuffer) stalled(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return (b.bytes > 0 || b.control > 0) && time.Duration(now-b.progress) > b.cfg.WriteTimeout
}

// pauseState returns the channel closed when the current pause ends and
// when the pause began; a nil channel means the connection is not paused.
func (b *sendBuffer) pauseState() (<-chan struct{}, time.Time) {
	if !b.isPaused() {
		return nil, time.Time{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.paused {
		return nil, time.Time{}
	}
	return b.resume, b.since
}

// isPaused reports whether reading is paused, without taking the lock.
func (b *sendBuffer) isPaused() bool { return b.pausedFlag.Load() }

// buffered returns the current unsent bytes.
func (b *sendBuffer) buffered() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bytes
}

// close removes the connection from the process-wide totals (its queued
// writes may still complete later; they no longer count) and wakes a
// paused reader.
func (b *sendBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.paused {
		b.endPauseLocked()
	}
	b.totals.buffered.Add(-b.bytes)
	b.closed = true
}
