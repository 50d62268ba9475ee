package service

import (
	"net/http"
	"testing"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// BenchmarkUpgradeAuth compares, over real sockets, an upgrade refused
// for a bad token (401 before the handshake) with one admitted by a
// valid token (upgrade, then close). Both include the client's dial.
//
//	go test -run '^$' -bench UpgradeAuth ./service/
func BenchmarkUpgradeAuth(b *testing.B) {
	ts := runServer(b, jwtConfig)
	valid := mint(b, claimsFor("alice", nil))
	forged := valid[:len(valid)-4] + "AAAA"
	for _, bb := range []struct {
		name   string
		tok    string
		status int
	}{
		{"rejected", forged, http.StatusUnauthorized},
		{"upgraded", valid, http.StatusSwitchingProtocols},
	} {
		b.Run(bb.name, func(b *testing.B) {
			for b.Loop() {
				c, resp, err := wstest.DialRaw(ts.wsURL("/ws/echo"), bearer(bb.tok))
				if err != nil || resp.StatusCode != bb.status {
					b.Fatalf("%v %v, want %d", err, resp, bb.status)
				}
				if resp.StatusCode == http.StatusSwitchingProtocols {
					_, _ = c.CloseHandshake(1000, "")
					c.Close()
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "attempts/s")
		})
	}
}
