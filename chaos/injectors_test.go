package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// The injectors against an in-process wsd: each must produce the
// outcome wsd documents, so that a scenario failing in the e2e suite
// points at the server, not at the injector.

func TestAbuseCasesGetTheirDocumentedAnswers(t *testing.T) {
	tg := startServer(t, func(c *service.Config) {
		c.Limits.MaxMessageBytes = 1024
		c.Limits.HandshakeTimeout = time.Second
		c.Limits.AllowedOrigins = []string{"http://ok.example"}
	})
	cases := Abuse(t.Context(), tg, AbuseConfig{MaxMessageBytes: 1024, HandshakeTimeout: time.Second, Slowloris: 3, ForbiddenOrigin: "http://evil.example"})
	if len(cases) < 20 {
		t.Fatalf("%d cases", len(cases))
	}
	for _, c := range cases {
		if !c.Pass {
			t.Errorf("%s: want %s, got %s", c.Name, c.Want, c.Got)
		}
	}
}

func TestFloodPausesThenLosesNothing(t *testing.T) {
	tg := startServer(t, func(c *service.Config) {
		c.Backpressure.WarnBytes, c.Backpressure.PauseBytes, c.Backpressure.ResumeBytes, c.Backpressure.MaxBytes = 16<<10, 32<<10, 16<<10, 64<<10
	})
	out, err := Flood(t.Context(), tg, FloodConfig{Conns: 2, Messages: 2000, Size: 4096, PauseWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if out.PausedSeen < 1 || out.Lost != 0 || out.OutOfOrder != 0 || out.Sent != 4000 || out.Closed != 0 {
		t.Errorf("%+v", out)
	}
}

func TestChurnAndPeers(t *testing.T) {
	tg := startServer(t, func(c *service.Config) {
		c.Heartbeat.PingInterval, c.Heartbeat.PongTimeout = 200*time.Millisecond, 200*time.Millisecond
	})
	out, err := Churn(t.Context(), tg, ChurnConfig{Cycles: 300, Workers: 8})
	if err != nil || out.Cycles != 300 || out.Failed+out.Refused != 0 {
		t.Fatalf("%+v %v", out, err)
	}
	// Silent peers are reaped by the heartbeat; live ones are not.
	silent, err := OpenPeers(t.Context(), tg.EchoURL(), 5, PeerSilent)
	if err != nil {
		silent.Close() // the ones opened before the error
		t.Fatal(err)
	}
	defer silent.Close()
	live, err := OpenPeers(t.Context(), tg.EchoURL(), 5, PeerLive)
	if err != nil {
		live.Close() // the ones opened before the error
		t.Fatal(err)
	}
	defer live.Close()
	if err := Poll(t.Context(), 10*time.Second, 50*time.Millisecond, func() error {
		st, err := tg.Admin.Stats(t.Context())
		if err != nil {
			return err
		}
		if st.HeartbeatTimeoutsTotal < 5 {
			return fmt.Errorf("%d reaped", st.HeartbeatTimeoutsTotal)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n, _ := live.Ended(); n != 0 {
		t.Errorf("%d live peers reaped", n)
	}
	live.Close()
	silent.Close()
}
