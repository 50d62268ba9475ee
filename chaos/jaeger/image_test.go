package jaeger

import (
	"slices"
	"testing"
)

// TestWrapHash: the cache check compares the image's label with
// wrap.hash(), so every field of the spec must change the hash, and the
// options must carry the label.
func TestWrapHash(t *testing.T) {
	base := wrap.hash()
	if base != wrap.hash() {
		t.Fatal("hash is not deterministic")
	}
	variants := map[string]imageSpec{}
	v := wrap
	v.Env = [][2]string{{"JAEGER_LISTEN_HOST", "127.0.0.1"}}
	variants["env"] = v
	v = wrap
	v.User = "0"
	variants["user"] = v
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
	// expose + user + one env + two labels + the spec label.
	if n := len(wrap.options()); n != 2+len(wrap.Env)+len(wrap.Labels)+1 {
		t.Errorf("%d options, want one per spec entry plus the spec label", n)
	}
	if wrap.Env[0] != [2]string{"JAEGER_LISTEN_HOST", "0.0.0.0"} {
		t.Errorf("env %v: Jaeger must listen on every interface in a container", wrap.Env)
	}
}
