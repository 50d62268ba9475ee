package service

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/wsd-dev/wsd/internal/wstest"
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
	pub, pubH := wstest.DialGWS(t, url, true)
	_, a := wstest.DialGWS(t, url, true)
	_, b := wstest.DialGWS(t, url, true)
	_, other := wstest.DialGWS(t, ts.wsURL("/ws/topics/room.2"), true)
	waitStats(t, ts, "2 topics and 4 subscribers", func(st Stats) bool { return st.Topics == 2 && st.Subscribers == 4 })
	const n = 200
	for i := range n {
		if err := pub.WriteMessage(gws.OpcodeBinary, seqPayload(i, 512)); err != nil {
			t.Fatal(err)
		}
	}
	wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if a.Count() != n || b.Count() != n {
			return fmt.Errorf("a %d b %d of %d", a.Count(), b.Count(), n)
		}
		return nil
	})
	checkOrdered(t, a.Messages(), n)
	checkOrdered(t, b.Messages(), n)
	if pubH.Count() != 0 || other.Count() != 0 {
		t.Fatalf("sender got %d, other topic got %d; want 0 and 0", pubH.Count(), other.Count())
	}
}

// TestSlowConsumerIsolation: one subscriber that never reads must not
// delay the publisher or a fast subscriber; it is closed with 1013
// (close policy) or loses only counted messages (drop policy).
//
// "Fast" means keeping up with the publish rate, so the publisher stays
// at most window messages ahead of the fast subscriber (under -race a
// gws client reads far slower than an unpaced loopback publisher writes,
// and would rightly be treated as slow too). The slow subscriber has a
// 64 KiB receive buffer and does not read until the end, so its share
// piles up in the kernel buffers (a few MiB on loopback) and then past
// max_bytes. (A much smaller receive buffer makes reading the backlog at
// the end take minutes: silly-window avoidance and delayed ACKs.) write_timeout is long so that, under the drop
// policy, the slow subscriber is never closed by a stuck write: only
// drops are allowed to happen to it.
func TestSlowConsumerIsolation(t *testing.T) {
	for _, policy := range []string{SlowConsumerClose, SlowConsumerDrop} {
		t.Run(policy, func(t *testing.T) {
			ts := runServer(t, func(c *Config) {
				c.Backpressure.SlowConsumer = policy
				c.Backpressure.WriteTimeout = 2 * time.Minute
			})
			url := ts.wsURL("/ws/topics/feed")
			slow := wstest.MustDialRaw(t, url, wstest.WithReadBuffer(64<<10)) // never reads until the end
			_, fast := wstest.DialGWS(t, url, true)
			pub, _ := wstest.DialGWS(t, url, true)
			waitStats(t, ts, "3 subscribers", func(st Stats) bool { return st.Subscribers == 3 })
			// 12 MiB through a 512 KiB max_bytes: far more than the
			// kernel buffers of the slow connection absorb.
			const n, size, window = 768, 16 << 10, 8
			publish := func(from, to int) {
				for i := from; i < to; i++ {
					wstest.CheckFor(t, 30*time.Second, time.Millisecond, func() error {
						if got := fast.Count(); i-got > window {
							return fmt.Errorf("fast subscriber stuck at %d of %d sent", got, i)
						}
						return nil
					})
					if err := pub.WriteMessage(gws.OpcodeBinary, seqPayload(i, size)); err != nil {
						t.Fatal(err)
					}
				}
				wstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
					if fast.Count() != to {
						return fmt.Errorf("fast subscriber got %d of %d", fast.Count(), to)
					}
					return nil
				})
				checkOrdered(t, fast.Messages(), to)
			}
			publish(0, n)

			switch policy {
			case SlowConsumerClose:
				wstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
					return expectClose(ts, CloseTryAgainLater, reasonSlowConsumer, InitiatorServer)
				})
				snap := ts.obs.snapshot()
				if snap.slow != 1 || snap.dropped != 0 {
					t.Fatalf("slow consumer events %d drops %d, want 1 and 0", snap.slow, snap.dropped)
				}
				// Only the slow one was closed: the fast one and the
				// publisher are still subscribed.
				if st := ts.Stats(); st.Subscribers != 2 || st.EvictedTotal != 1 {
					t.Fatalf("after eviction: %+v, want 2 subscribers and 1 eviction", st)
				}
				// Reading now: data already in flight, in order, then
				// 1013 or EOF (the close frame is best effort: the
				// socket was full when it was evicted).
				var got [][]byte
				for {
					f, err := slow.ReadFrame(20 * time.Second)
					if err != nil {
						if !isEOF(err) {
							t.Fatalf("slow consumer stream after %d messages: %v", len(got), err)
						}
						break
					}
					if f.Opcode == wstest.OpClose {
						if f.CloseCode() != CloseTryAgainLater {
							t.Fatalf("slow consumer got close %d, want 1013", f.CloseCode())
						}
						break
					}
					got = append(got, f.Payload)
				}
				checkOrdered(t, got, 0)
				if len(got) >= n {
					t.Fatalf("slow consumer received all %d messages: it was never slow", len(got))
				}
				// The session's counters are exact: what it says it
				// wrote is what the client read.
				for _, c := range ts.obs.snapshot().closes {
					if c.Reason == reasonSlowConsumer && (c.MessagesOut != int64(len(got)) || c.BytesOut != int64(len(got)*size)) {
						t.Fatalf("slow consumer's close says %d messages %d bytes out; the client read %d",
							c.MessagesOut, c.BytesOut, len(got))
					}
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
				// dropped accounts for every message: nothing else lost.
				var got [][]byte
				readSlow := func(sent int, dropped int64) {
					for len(got)+int(dropped) < sent {
						f, err := slow.ReadFrame(20 * time.Second)
						if err != nil {
							t.Fatalf("slow reader after %d messages (%d dropped): %v", len(got), dropped, err)
						}
						if f.Opcode == wstest.OpBinary {
							got = append(got, f.Payload)
						}
					}
					checkOrdered(t, got, 0)
				}
				readSlow(n, st.DroppedTotal)
				// Having drained, the slow subscriber gets every later
				// message again: dropping ends with the episode.
				const more = 32
				publish(n, n+more)
				readSlow(n+more, st.DroppedTotal)
				if last := int(binary.BigEndian.Uint64(got[len(got)-1])); last != n+more-1 {
					t.Fatalf("slow subscriber's last message is %d, want %d", last, n+more-1)
				}
				if d := ts.Stats().DroppedTotal; d != st.DroppedTotal {
					t.Fatalf("dropped %d after draining, want still %d", d, st.DroppedTotal)
				}
			}
		})
	}
}
