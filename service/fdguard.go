package service

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
)

// fdGuard estimates the process's open descriptors without a /proc scan
// per request: a background sample (countOpenFDs, once per housekeeping
// tick) gives the descriptors that are not public connections, and the
// public listener tracks its own connections exactly with an atomic
// counter. Their sum is the estimate that admission, /readyz and the
// accept guard read.
type fdGuard struct {
	limit int64 // RLIMIT_NOFILE (soft) at start; Go raises soft to hard
	// soft: above it, upgrades are refused with 503 and /readyz is 503.
	soft int64
	// hard: above it, the public listener closes new connections at
	// accept, keeping the rest of the limit for the admin listener, log
	// files and the spare descriptor.
	hard int64

	other   atomic.Int64 // descriptors that are not public connections
	public  atomic.Int64 // open public connections (exact)
	sampled atomic.Int64 // unix nanos of the last sample
}

// resampleEvery bounds how often a refusal re-reads the count, so the
// guard lifts soon after descriptors are freed elsewhere in the process
// without scanning /proc per request under a flood.
const resampleEvery = 100 * time.Millisecond

// adminReserve is the number of descriptors the hard cap keeps back for
// the admin listener and the process (at least; 5% of the limit when
// that is more).
const adminReserve = 16

func newFDGuard(headroom float64) *fdGuard {
	var rl syscall.Rlimit
	limit := int64(1024)
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 0 && rl.Cur < 1<<31 {
		limit = int64(rl.Cur)
	}
	g := &fdGuard{limit: limit}
	g.soft = int64(float64(limit) * (1 - headroom))
	reserve := max(int64(adminReserve), limit/20)
	g.hard = max(limit-reserve, g.soft)
	g.sample()
	return g
}

// sample re-reads the open descriptor count. When the count cannot be
// read because the process is out of descriptors, that is the answer:
// the guard records the limit as reached, so admission and the accept
// guard refuse until a later sample succeeds (else a stale, low sample
// would admit connections into EMFILE).
func (g *fdGuard) sample() {
	g.sampled.Store(time.Now().UnixNano())
	n, err := readOpenFDs()
	switch {
	case err == nil:
		g.other.Store(max(0, int64(n)-g.public.Load()))
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		g.other.Store(max(0, g.limit-g.public.Load()))
	}
}

// open returns the estimated open descriptors.
func (g *fdGuard) open() int64 { return g.other.Load() + g.public.Load() }

// underPressure reports whether new upgrades must be refused.
func (g *fdGuard) underPressure() bool { return g.over(g.soft + 1) }

// exhausted reports whether the public listener must refuse at accept.
func (g *fdGuard) exhausted() bool { return g.over(g.hard) }

// over reports whether open descriptors are at or above limit, re-reading
// a stale sample before saying yes.
func (g *fdGuard) over(limit int64) bool {
	if g.open() < limit {
		return false
	}
	// One caller re-reads a stale sample; the others under the same
	// flood use the current estimate instead of all scanning /proc.
	last, now := g.sampled.Load(), time.Now().UnixNano()
	if now-last > int64(resampleEvery) && g.sampled.CompareAndSwap(last, now) {
		g.sample()
	}
	return g.open() >= limit
}

// countOpenFDs counts the entries of /proc/self/fd (Linux). It costs a
// directory read, so it runs on the housekeeping tick and for
// /debug/stats, never per request. The descriptor used to read the
// directory is not counted.
func countOpenFDs() (int, bool) {
	n, err := readOpenFDs()
	return n, err == nil
}

// readOpenFDs is countOpenFDs with the reason it failed. It reads the
// directory with getdents64 into a stack buffer and counts records
// without building names: os.File.Readdirnames allocates a string per
// descriptor, which at 10k connections and one sample a second was the
// largest source of garbage of an idle server (its heap, and so its RSS,
// grew towards the GC goal with nothing happening).
func readOpenFDs() (int, error) {
	fd, err := syscall.Open("/proc/self/fd", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("count open descriptors: %w", err)
	}
	defer syscall.Close(fd)
	var buf [8 << 10]byte
	n := 0
	for {
		got, err := syscall.ReadDirent(fd, buf[:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("count open descriptors: %w", err)
		}
		if got <= 0 {
			break
		}
		n += countDirents(buf[:got])
	}
	return n - 1, nil // the descriptor reading the directory
}

// countDirents counts the linux_dirent64 records in b, leaving out "."
// and "..": each record is ino (8 bytes), off (8), reclen (2), type (1),
// then the NUL-terminated name.
func countDirents(b []byte) int {
	n := 0
	for len(b) >= 19 {
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < 19 || reclen > len(b) {
			break
		}
		name := b[19:reclen]
		dot := len(name) >= 2 && name[0] == '.' && name[1] == 0
		dotdot := len(name) >= 3 && name[0] == '.' && name[1] == '.' && name[2] == 0
		if !dot && !dotdot {
			n++
		}
		b = b[reclen:]
	}
	return n
}
