package chaos

import (
	"testing"

	"github.com/wsd-dev/wsd/service"
)

func TestSlowConsumersDropPolicyAccountsForEveryMessage(t *testing.T) {
	tg := startServer(t, func(c *service.Config) {
		c.Backpressure = service.BackpressureConfig{WarnBytes: 8 << 10, PauseBytes: 16 << 10, ResumeBytes: 8 << 10,
			MaxBytes: 32 << 10, MaxPaused: c.Backpressure.MaxPaused, WriteTimeout: c.Backpressure.WriteTimeout, SlowConsumer: "drop"}
	})
	before, err := tg.Admin.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	const messages = 2000
	out, err := SlowConsumers(t.Context(), tg, TopicConfig{Topic: "t", Fast: 2, Slow: 2, Messages: messages, Size: 1024, SlowReadRate: 4096, PublishRate: 500})
	if err != nil {
		t.Fatal(err)
	}
	after, err := tg.Admin.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range out.Fast {
		if f.Received != messages || !f.InOrder {
			t.Errorf("fast %d: %+v", i, f)
		}
	}
	lost := 0
	for i, s := range out.Slow {
		if !s.InOrder || s.Ended {
			t.Errorf("slow %d: %+v", i, s)
		}
		lost += messages - s.Received
	}
	if d := after.DroppedTotal - before.DroppedTotal; int64(lost) != d || d == 0 {
		t.Errorf("lost %d, dropped_total delta %d: want equal and > 0; %+v", lost, d, out)
	}
}
