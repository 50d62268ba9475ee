package service

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = s.Close(); _ = c.Close() })
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

// TestFrameReaderStream: whatever the read sizes (small header reads,
// payload reads below and above the pooled buffer's size) and however
// the writer splits its writes, the bytes come out whole and in order,
// early bytes from the upgrade request first; the end of the stream is
// io.EOF.
func TestFrameReaderStream(t *testing.T) {
	for _, tc := range []struct {
		name  string
		early string
	}{
		{"no early bytes", ""},
		{"early bytes", "early frame bytes"},
		// More than a pooled buffer holds (net/http's reader is 4 KiB
		// today, so only a larger upgrade reader can hand over this much).
		{"early bytes beyond a pooled buffer", strings.Repeat("early ", frameReadBuffer/4)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, cli := tcpPair(t)
			rng := rand.New(rand.NewPCG(1, 2))
			want := make([]byte, 4<<20)
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			go func() {
				w := rand.New(rand.NewPCG(3, 4))
				for rest := want; len(rest) > 0; {
					n := min(len(rest), 1+w.IntN(20000))
					if _, err := cli.Write(rest[:n]); err != nil {
						return
					}
					rest = rest[n:]
				}
				_ = cli.CloseWrite()
			}()
			hr := bufio.NewReaderSize(io.MultiReader(strings.NewReader(tc.early), bytes.NewReader(nil)), 2*frameReadBuffer)
			if tc.early != "" {
				if _, err := hr.Peek(len(tc.early)); err != nil {
					t.Fatal(err)
				}
			}
			br := testFrameReader(srv, hr)
			var got []byte
			sizes := []int{2, 8, 4, 125, 1024, frameReadBuffer, 3 * frameReadBuffer, 7}
			for i := 0; ; i++ {
				p := make([]byte, sizes[i%len(sizes)])
				n, err := io.ReadFull(br, p)
				got = append(got, p[:n]...)
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					break
				}
				if err != nil {
					t.Fatalf("read: %v", err)
				}
			}
			if !bytes.Equal(got, append([]byte(tc.early), want...)) {
				t.Fatalf("got %d bytes, want %d; first difference at %d", len(got), len(tc.early)+len(want), firstDiff(got, append([]byte(tc.early), want...)))
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestBorrowingReaderIdleHoldsNoBuffer: once the bytes that arrived are
// read, the pooled buffer is back in the pool, and a read attempt on an
// empty socket gives it back before waiting.
func TestBorrowingReaderIdleHoldsNoBuffer(t *testing.T) {
	srv, cli := tcpPair(t)
	b := newBorrowingReader(srv, bufio.NewReader(strings.NewReader(""))).(*borrowingReader)
	br := bufio.NewReaderSize(b, frameHeadBuffer)

	if _, err := cli.Write([]byte("hello, world")); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 12)
	if _, err := io.ReadFull(br, p); err != nil || string(p) != "hello, world" {
		t.Fatalf("read %q, %v", p, err)
	}
	if b.buf != nil {
		t.Fatal("drained reader still holds a pooled buffer")
	}

	raw, err := srv.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var done bool
	if err := raw.Control(func(fd uintptr) { done = b.try(fd) }); err != nil {
		t.Fatal(err)
	}
	if done || b.buf != nil {
		t.Fatalf("read attempt on an empty socket: done=%v, holds buffer=%v; want false, false", done, b.buf != nil)
	}

	// A blocked read wakes with the data that arrives later.
	go func() {
		time.Sleep(20 * time.Millisecond)
		_, _ = cli.Write([]byte("later"))
	}()
	p = make([]byte, 5)
	if _, err := io.ReadFull(br, p); err != nil || string(p) != "later" {
		t.Fatalf("read %q, %v", p, err)
	}
}

// TestBorrowingReaderErrors: a reset connection is an error net
// classifies as ECONNRESET (a lost connection, for the close log), a
// closed one net.ErrClosed, a read deadline a timeout.
func TestBorrowingReaderErrors(t *testing.T) {
	t.Run("reset", func(t *testing.T) {
		srv, cli := tcpPair(t)
		br := testFrameReader(srv, bufio.NewReader(strings.NewReader("")))
		_ = cli.SetLinger(0)
		_ = cli.Close()
		_, err := br.ReadByte()
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after RST: %v, want ECONNRESET", err)
		}
		var ne *net.OpError
		if !errors.As(err, &ne) || ne.Op != "read" {
			t.Fatalf("read after RST: %T %v, want a *net.OpError like net.Conn's", err, err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		srv, _ := tcpPair(t)
		br := testFrameReader(srv, bufio.NewReader(strings.NewReader("")))
		_ = srv.Close()
		if _, err := br.ReadByte(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed socket: %v, want net.ErrClosed", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		srv, _ := tcpPair(t)
		br := testFrameReader(srv, bufio.NewReader(strings.NewReader("")))
		_ = srv.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := br.ReadByte()
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read past the deadline: %v, want a timeout", err)
		}
	})
}

// testFrameReader is the reader chain below the frame guard: a small
// bufio.Reader over a borrowingReader, as gws sees it.
func testFrameReader(nc net.Conn, hr *bufio.Reader) *bufio.Reader {
	return bufio.NewReaderSize(newBorrowingReader(nc, hr), frameHeadBuffer)
}
