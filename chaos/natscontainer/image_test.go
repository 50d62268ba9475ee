package natscontainer

import (
	"slices"
	"testing"
)

// TestImageSpec: the monitor port is how the wait strategy and the suite
// see the server, so the command must open it on an exposed port; the
// tag names the version the spec builds.
func TestImageSpec(t *testing.T) {
	w := image.Wrap
	if !slices.Contains(w.Cmd, "--http_port") || !slices.Contains(w.Expose, MonitorPort) {
		t.Errorf("cmd %v expose %v: the monitoring listener must be on %s", w.Cmd, w.Expose, MonitorPort)
	}
	if image.Tag != ImageTag || image.Version != Version || image.Module != Module {
		t.Errorf("spec %s %s@v%s: want %s built from %s@v%s", image.Tag, image.Module, image.Version, ImageTag, Module, Version)
	}
}
