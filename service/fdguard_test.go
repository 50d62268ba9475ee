package service

import (
	"encoding/binary"
	"os"
	"testing"
)

// TestCountOpenFDs checks the getdents count against the standard
// library's listing, follows descriptors opened and closed, and pins
// that a sample creates no garbage per descriptor.
func TestCountOpenFDs(t *testing.T) {
	listed := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries) - 1 // ReadDir's own descriptor
	}
	n, ok := countOpenFDs()
	if !ok {
		t.Fatal("countOpenFDs failed")
	}
	if want := listed(); n != want {
		t.Fatalf("countOpenFDs = %d, os.ReadDir lists %d", n, want)
	}

	// More descriptors than one 8 KiB getdents buffer holds (~340).
	var files []*os.File
	for range 600 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if got, _ := countOpenFDs(); got != n+600 {
		t.Errorf("with 600 more open: %d, want %d", got, n+600)
	}
	if want := listed(); n+600 != want {
		t.Errorf("os.ReadDir lists %d, want %d", want, n+600)
	}
	for _, f := range files {
		_ = f.Close()
	}
	if got, _ := countOpenFDs(); got != n {
		t.Errorf("after closing them: %d, want %d", got, n)
	}

	allocs := testing.AllocsPerRun(20, func() { _, _ = countOpenFDs() })
	if allocs > 1 { // the path's C string
		t.Errorf("countOpenFDs allocates %.0f times per call, want at most 1", allocs)
	}
}

func TestCountDirents(t *testing.T) {
	rec := func(name string) []byte {
		reclen := (19 + len(name) + 1 + 7) &^ 7
		b := make([]byte, reclen)
		binary.NativeEndian.PutUint16(b[16:18], uint16(reclen))
		copy(b[19:], name)
		return b
	}
	cat := func(names ...string) []byte {
		var b []byte
		for _, n := range names {
			b = append(b, rec(n)...)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		buf  []byte
		want int
	}{
		{"empty", nil, 0},
		{"dots only", cat(".", ".."), 0},
		{"dots and descriptors", cat(".", "..", "0", "1", "2", "10000"), 4},
		{"names starting with a dot are counted", cat(".x", "..y"), 2},
		{"truncated record stops", append(cat("0", "1"), 1, 2, 3), 2},
		{"bad reclen stops", append(cat("0"), make([]byte, 24)...), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := countDirents(tc.buf); got != tc.want {
				t.Errorf("countDirents = %d, want %d", got, tc.want)
			}
		})
	}
}
