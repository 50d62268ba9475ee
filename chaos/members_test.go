package chaos

import (
	"fmt"
	"testing"
	"time"
)

// TestMembersRecordPerPublisherDelivery: on one in-process wsd, two
// publishing members and a listener; each records the other publishers'
// messages in order, never its own; a member whose server ends the
// connection can Reconnect and keeps its record; BusStats reads the
// local bus (always connected, no subscription).
func TestMembersRecordPerPublisherDelivery(t *testing.T) {
	tg := startServer(t, nil)
	ctx := t.Context()
	var ms []*Member
	for id := range uint32(3) {
		m, err := JoinTopic(ctx, tg.TopicURL("members"), id+1)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	defer func() {
		for _, m := range ms {
			m.Leave(2 * time.Second)
		}
	}()
	if err := Poll(ctx, 10*time.Second, 20*time.Millisecond, func() error {
		st, err := tg.Admin.Stats(ctx)
		if err != nil {
			return err
		}
		if st.Subscribers != 3 {
			return fmt.Errorf("%d subscribers", st.Subscribers)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for seq := range uint64(n) {
		for _, p := range ms[:2] {
			if err := p.Publish(seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := func(m, p *Member) int {
		if m == p {
			return 0
		}
		return n
	}
	if err := Poll(ctx, 10*time.Second, 20*time.Millisecond, func() error {
		for _, m := range ms {
			for _, p := range ms[:2] {
				if d := DeliveryOf(m.Seqs(p.ID), 0, n); d.InRange != want(m, p) || !d.Ordered {
					return fmt.Errorf("member %d from %d: %+v, want %d in order", m.ID, p.ID, d, want(m, p))
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("per-publisher delivery: %v", err)
	}
	if f := ms[2].Foreign(); f != 0 {
		t.Errorf("%d foreign messages, want 0", f)
	}
	if err := ms[2].Reconnect(ctx, tg.TopicURL("members")); err == nil {
		t.Error("Reconnect on an open connection succeeded, want an error")
	}
	bus, err := tg.Admin.BusStats(ctx)
	if err != nil || !bus.Connected || bus.Subscriptions != 0 {
		t.Errorf("local bus stats %+v, %v: want connected, no broker subscription", bus, err)
	}
}

func TestDeliveryOf(t *testing.T) {
	for _, tc := range []struct {
		seqs   []uint64
		lo, hi uint64
		want   Delivery
	}{
		{nil, 0, 10, Delivery{Ordered: true}},
		{[]uint64{0, 1, 2, 5, 9}, 2, 9, Delivery{Total: 5, InRange: 2, Ordered: true}},
		{[]uint64{0, 2, 1}, 0, 3, Delivery{Total: 3, InRange: 3, Ordered: false}},
		{[]uint64{3, 3}, 0, 10, Delivery{Total: 2, InRange: 2, Ordered: false}},
	} {
		if got := DeliveryOf(tc.seqs, tc.lo, tc.hi); got != tc.want {
			t.Errorf("DeliveryOf(%v, %d, %d) = %+v, want %+v", tc.seqs, tc.lo, tc.hi, got, tc.want)
		}
	}
}
