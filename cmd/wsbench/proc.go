package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK)
// needs cgo, and the ABI fixes it).
const clockTicks = 100

// procSample is one reading of a process's cumulative CPU time and its
// resident memory.
type procSample struct {
	at  time.Time
	cpu time.Duration // utime + stime
	rss int64         // bytes
}

// sampleProc reads /proc/<pid>/stat (CPU) and /proc/<pid>/statm (RSS).
func sampleProc(pid int) (procSample, error) {
	at := time.Now()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read cpu of pid %d: %w", pid, err)
	}
	cpu, err := parseStatCPU(stat)
	if err != nil {
		return procSample{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	statm, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	rss, err := parseStatmRSS(statm, int64(os.Getpagesize()))
	if err != nil {
		return procSample{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return procSample{at: at, cpu: cpu, rss: rss}, nil
}

// parseStatCPU returns utime+stime from a /proc/<pid>/stat line. The
// command name (field 2) may contain spaces and parentheses, so fields
// are counted after its last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", truncate(stat))
	}
	f := strings.Fields(string(stat[i+1:]))
	// After ")": state is field 3, so utime (14) and stime (15) are at 11, 12.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat %q", truncate(stat))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat cpu field %q: %w", s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// parseStatmRSS returns the resident set (second field, in pages) in bytes.
func parseStatmRSS(statm []byte, pageSize int64) (int64, error) {
	f := strings.Fields(string(statm))
	if len(f) < 2 {
		return 0, fmt.Errorf("short /proc statm %q", truncate(statm))
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc statm rss %q: %w", f[1], err)
	}
	return pages * pageSize, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		b = b[:80]
	}
	return string(b)
}

// raiseNoFile lifts RLIMIT_NOFILE towards want: the hard limit first
// (needs CAP_SYS_RESOURCE), else the soft limit up to the hard one. It
// returns the resulting soft limit; child processes inherit it.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit nofile: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want, nil
		}
	}
	cur := min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: cur, Max: lim.Max}); err != nil {
		return lim.Cur, fmt.Errorf("setrlimit nofile %d: %w", cur, err)
	}
	return cur, nil
}
