package service

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

// seqPayload is a message whose first 8 bytes are its sequence number.
func seqPayload(i, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, uint64(i))
	return b
}

func checkOrdered(t *testing.T, msgs [][]byte, wantAll int) {
	t.Helper()
	last := -1
	for _, m := range msgs {
		seq := int(binary.BigEndian.Uint64(m))
		if seq <= last {
			t.Fatalf("out of order: %d after %d", seq, last)
		}
		if wantAll > 0 && seq != last+1 {
			t.Fatalf("gap: %d after %d", seq, last)
		}
		last = seq
	}
	if wantAll > 0 && len(msgs) != wantAll {
		t.Fatalf("got %d messages, want %d", len(msgs), wantAll)
	}
}

// TestTopicFanout: every other subscriber gets each message, the sender
// does not, and topic membership is released on close.
func TestTopicFanout(t *testing.T) {
	ts := runServer(t, nil)
	url := ts.wsURL("/ws/topics/room-1")
	pub, pubH := dialGWS(t, url, true)
	_, a := dialGWS(t, url, true)
	_, b := dialGWS(t, url, true)
	_, other := dialGWS(t, ts.wsURL("/ws/topics/room.2"), true)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st := ts.Stats(); st.Topics != 2 || st.Subscribers != 4 {
			return fmt.Errorf("topics %d subscribers %d", st.Topics, st.Subscribers)
		}
		return nil
	})
	const n = 200
	for i := range n {
		if err := pub.WriteMessage(gws.OpcodeBinary, seqPayload(i, 512)); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if a.count() != n || b.count() != n {
			return fmt.Errorf("a %d b %d of %d", a.count(), b.count(), n)
		}
		return nil
	})
	checkOrdered(t, a.msgs, n)
	checkOrdered(t, b.msgs, n)
	if pubH.count() != 0 || other.count() != 0 {
		t.Fatalf("sender got %d, other topic got %d; want 0 and 0", pubH.count(), other.count())
	}
}

// TestSlowConsumerIsolation: one subscriber that never reads must not
// delay the publisher or a fast subscriber; it is closed with 1013
// (close policy) or loses only counted messages (drop policy).
func TestSlowConsumerIsolation(t *testing.T) {
	for _, policy := range []string{SlowConsumerClose, SlowConsumerDrop} {
		t.Run(policy, func(t *testing.T) {
			ts := runServer(t, func(c *Config) { c.Backpressure.SlowConsumer = policy })
			url := ts.wsURL("/ws/topics/feed")
			slow, _ := dialRaw(t, url, 4096, nil) // never reads until the end
			_, fast := dialGWS(t, url, true)
			pub, _ := dialGWS(t, url, true)
			checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if ts.Stats().Subscribers != 3 {
					return fmt.Errorf("subscribers %d", ts.Stats().Subscribers)
				}
				return nil
			})
			// 8 MiB through a 512 KiB max_bytes: the slow one overflows.
			const n, size = 512, 16 << 10
			for i := range n {
				if err := pub.WriteMessage(gws.OpcodeBinary, seqPayload(i, size)); err != nil {
					t.Fatal(err)
				}
			}
			checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
				if fast.count() != n {
					return fmt.Errorf("fast subscriber got %d of %d", fast.count(), n)
				}
				return nil
			})
			checkOrdered(t, fast.msgs, n)

			switch policy {
			case SlowConsumerClose:
				checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
					return expectClose(ts, CloseTryAgainLater, reasonSlowConsumer, InitiatorServer)
				})
				if s := ts.obs.snapshot().slow; s != 1 {
					t.Fatalf("slow consumer events %d, want 1", s)
				}
				// Reading now: data already in flight, then 1013 or EOF.
				code, err := slow.readUntilClose(20 * time.Second)
				if err == nil && code != CloseTryAgainLater {
					t.Fatalf("slow consumer got close %d, want 1013", code)
				}
				if err != nil && !isEOF(err) {
					t.Fatalf("slow consumer stream: %v", err)
				}
			case SlowConsumerDrop:
				st := ts.Stats()
				if st.DroppedTotal == 0 || st.Subscribers != 3 {
					t.Fatalf("drop policy: %+v, want drops counted and the slow subscriber kept", st)
				}
				if d := ts.obs.snapshot().dropped; int64(d) != st.DroppedTotal {
					t.Fatalf("observer dropped %d, stats %d", d, st.DroppedTotal)
				}
				// What the slow one receives is in order, and received +
				// dropped accounts for every message.
				var got [][]byte
				for len(got)+int(st.DroppedTotal) < n {
					f, err := slow.readFrame(20 * time.Second)
					if err != nil {
						t.Fatalf("slow reader after %d messages: %v", len(got), err)
					}
					if f.opcode == 0x2 {
						got = append(got, f.payload)
					}
				}
				checkOrdered(t, got, 0)
				if len(got)+int(st.DroppedTotal) != n {
					t.Fatalf("received %d + dropped %d != %d", len(got), st.DroppedTotal, n)
				}
			}
		})
	}
}
