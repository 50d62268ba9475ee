package jaeger

import "testing"

// TestImageSpec: Jaeger listens on localhost unless told otherwise,
// unreachable from other containers; the tag names the version the spec
// builds.
func TestImageSpec(t *testing.T) {
	if w := image.Wrap; len(w.Env) == 0 || w.Env[0] != [2]string{"JAEGER_LISTEN_HOST", "0.0.0.0"} {
		t.Errorf("env %v: Jaeger must listen on every interface in a container", w.Env)
	}
	if image.Tag != ImageTag || image.Version != Version || image.Module != Module {
		t.Errorf("spec %s %s@v%s: want %s built from %s@v%s", image.Tag, image.Module, image.Version, ImageTag, Module, Version)
	}
}
