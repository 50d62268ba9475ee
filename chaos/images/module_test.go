package images

import "testing"

func TestBinaryName(t *testing.T) {
	for _, tc := range []struct{ mod, pkg, want string }{
		{"github.com/nats-io/nats-server/v2", ".", "nats-server"},
		{"github.com/jaegertracing/jaeger", "./cmd/jaeger", "jaeger"},
		{"example.com/tool", ".", "tool"},
	} {
		if got := binaryName(tc.mod, tc.pkg); got != tc.want {
			t.Errorf("binaryName(%q, %q) = %q, want %q (go build's name)", tc.mod, tc.pkg, got, tc.want)
		}
	}
}
