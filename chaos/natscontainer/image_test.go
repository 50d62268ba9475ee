package natscontainer

import (
	"slices"
	"testing"
)

// TestWrapHash: the cache check compares the image's label with
// wrap.hash(), so every field of the spec must change the hash, and the
// options must carry the label.
func TestWrapHash(t *testing.T) {
	base := wrap.hash()
	variants := map[string]imageSpec{}
	v := wrap
	v.Cmd = []string{"--port", "4223"}
	variants["cmd"] = v
	v = wrap
	v.Expose = slices.Clone(wrap.Expose)[1:]
	variants["expose"] = v
	v = wrap
	v.Labels = [][2]string{{"org.opencontainers.image.version", "v0"}}
	variants["labels"] = v
	for name, spec := range variants {
		if spec.hash() == base {
			t.Errorf("changing %s keeps the hash %s: a stale cached image would be used", name, base)
		}
	}
	// expose + cmd + the labels + the spec label.
	if n := len(wrap.options()); n != 2+len(wrap.Labels)+1 {
		t.Errorf("%d options, want one per spec entry plus the spec label", n)
	}
	// The monitor port is how the wait strategy and the suite see the
	// server: the command must open it on the exposed port.
	if !slices.Contains(wrap.Cmd, "--http_port") || !slices.Contains(wrap.Expose, MonitorPort) {
		t.Errorf("cmd %v expose %v: the monitoring listener must be on %s", wrap.Cmd, wrap.Expose, MonitorPort)
	}
}
