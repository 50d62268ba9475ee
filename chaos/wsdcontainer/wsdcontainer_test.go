package wsdcontainer

import (
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

func TestOptionsShapeTheRequest(t *testing.T) {
	req := testcontainers.GenericContainerRequest{}
	for _, o := range []testcontainers.CustomizeRequestOption{
		WithConfig("heartbeat.ping_interval", "1s"),
		WithConfig("limits.max_connections_per_ip", "10"),
		WithMemoryLimit(64 << 20),
		WithNofile(256),
	} {
		if err := o.Customize(&req); err != nil {
			t.Fatal(err)
		}
	}
	if got := req.Env["WSD_HEARTBEAT__PING_INTERVAL"]; got != "1s" {
		t.Errorf("WSD_HEARTBEAT__PING_INTERVAL = %q", got)
	}
	if got := req.Env["WSD_LIMITS__MAX_CONNECTIONS_PER_IP"]; got != "10" {
		t.Errorf("WSD_LIMITS__MAX_CONNECTIONS_PER_IP = %q", got)
	}
	if req.HostConfigModifier == nil {
		t.Fatal("no host config modifier")
	}
	// Both modifiers apply (testcontainers chains them).
	var hc container.HostConfig
	req.HostConfigModifier(&hc)
	if hc.Memory != 64<<20 || hc.MemorySwap != 64<<20 {
		t.Errorf("memory %d swap %d", hc.Memory, hc.MemorySwap)
	}
	if len(hc.Ulimits) != 1 || hc.Ulimits[0].Name != "nofile" || hc.Ulimits[0].Soft != 256 || hc.Ulimits[0].Hard != 256 {
		t.Errorf("ulimits %+v", hc.Ulimits)
	}
}
