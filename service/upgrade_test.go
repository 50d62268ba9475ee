package service

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// maskedFrame encodes one final, masked client frame with a short payload.
func maskedFrame(opcode byte, payload []byte) []byte {
	mask := [4]byte{7, 1, 8, 2}
	f := []byte{0x80 | opcode, 0x80 | byte(len(payload))}
	f = append(f, mask[:]...)
	for i, b := range payload {
		f = append(f, b^mask[i%4])
	}
	return f
}

// TestFramesSentWithTheUpgradeRequest: a client may send its first frames
// in the same TCP segment as the upgrade request (they land in net/http's
// buffer); wsd must echo them, in order, and then keep reading the socket.
func TestFramesSentWithTheUpgradeRequest(t *testing.T) {
	ts := runServer(t, nil)
	c, err := net.DialTimeout("tcp", ts.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	early := append([]byte(upgradeRequest("/ws/echo")), maskedFrame(0x1, []byte("first"))...)
	early = append(early, maskedFrame(0x2, []byte("second"))...)
	if _, err := c.Write(early); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %s", resp.Status)
	}
	readEcho := func(wantOp byte, want string) {
		t.Helper()
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("read %q echo: %v", want, err)
		}
		p := make([]byte, h[1]&0x7f)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatalf("read %q echo: %v", want, err)
		}
		if op := h[0] & 0x0f; op != wantOp || !bytes.Equal(p, []byte(want)) {
			t.Fatalf("echo: opcode %#x payload %q, want %#x %q", op, p, wantOp, want)
		}
	}
	readEcho(0x1, "first")
	readEcho(0x2, "second")
	// Later frames come from the socket itself.
	if _, err := c.Write(maskedFrame(0x1, []byte("third"))); err != nil {
		t.Fatal(err)
	}
	readEcho(0x1, "third")
}
