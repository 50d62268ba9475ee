package images

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

var testWrap = Wrap{
	Env:    [][2]string{{"LISTEN_HOST", "0.0.0.0"}},
	User:   "10001",
	Cmd:    []string{"--port", "4222"},
	Expose: []string{"4222/tcp", "8222/tcp"},
	Labels: [][2]string{{"org.opencontainers.image.version", "v1.2.3"}},
}

// TestWrapHash: ModuleImage's cache check compares the image's label
// with Wrap.hash(), so every field must change the hash.
func TestWrapHash(t *testing.T) {
	base := testWrap.hash()
	if base != testWrap.hash() {
		t.Fatal("hash is not deterministic")
	}
	variants := map[string]func(*Wrap){
		"env":    func(w *Wrap) { w.Env = [][2]string{{"LISTEN_HOST", "127.0.0.1"}} },
		"user":   func(w *Wrap) { w.User = "0" },
		"cmd":    func(w *Wrap) { w.Cmd = []string{"--port", "4223"} },
		"expose": func(w *Wrap) { w.Expose = slices.Clone(testWrap.Expose)[1:] },
		"labels": func(w *Wrap) { w.Labels = [][2]string{{"org.opencontainers.image.version", "v0"}} },
	}
	for name, change := range variants {
		w := testWrap
		change(&w)
		if h := w.hash(); h == base {
			t.Errorf("changing %s keeps the hash %s: a stale cached image would be used", name, base)
		}
	}
}

// TestWrapOptions: the options render every field of the Wrap and the
// spec label carrying its hash, and an empty User or Cmd keeps
// FromBinary's defaults.
func TestWrapOptions(t *testing.T) {
	render := func(w Wrap) string {
		s := spec{user: "65534:65534", entry: "srv"}
		for _, o := range w.options("org.example.spec") {
			o(&s)
		}
		return s.dockerfile()
	}
	got := render(testWrap)
	for _, want := range []string{
		"ENV LISTEN_HOST=\"0.0.0.0\"\n",
		"USER 10001\n",
		"EXPOSE 4222/tcp\n", "EXPOSE 8222/tcp\n",
		"LABEL org.opencontainers.image.version=\"v1.2.3\"\n",
		fmt.Sprintf("LABEL org.example.spec=%q\n", testWrap.hash()),
		"CMD [\"--port\",\"4222\"]\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Dockerfile lacks %q:\n%s", want, got)
		}
	}
	bare := render(Wrap{Expose: []string{"4222/tcp"}})
	if !strings.Contains(bare, "USER 65534:65534\n") || strings.Contains(bare, "CMD ") {
		t.Errorf("empty User and Cmd: want FromBinary's default user and no CMD:\n%s", bare)
	}
}
