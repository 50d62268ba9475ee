package images

import (
	"strings"
	"testing"
)

func TestDockerfileRendersOptions(t *testing.T) {
	s := spec{user: "65534:65534", entry: "jaeger"}
	for _, o := range []Option{
		WithEnv("SPAN_STORAGE_TYPE", "memory"),
		WithExpose("16686/tcp", "4317/tcp"),
		WithCmd("--flag=1"),
		WithDockerfileLines(`LABEL a="b"`),
	} {
		o(&s)
	}
	got := s.dockerfile()
	for _, want := range []string{
		"FROM scratch\n",
		"COPY bin/jaeger /jaeger\n",
		"ENV SPAN_STORAGE_TYPE=\"memory\"\n",
		"EXPOSE 16686/tcp\n", "EXPOSE 4317/tcp\n",
		"USER 65534:65534\n",
		"LABEL a=\"b\"\n",
		"ENTRYPOINT [\"/jaeger\"]\n",
		"CMD [\"--flag=1\"]\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Dockerfile lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(strings.ToUpper(got), "FROM ") && strings.Count(got, "FROM ") != 1 {
		t.Errorf("Dockerfile must have exactly one FROM scratch:\n%s", got)
	}
}

func TestContentHashCoversEveryInput(t *testing.T) {
	base := map[string][]byte{"Dockerfile": []byte("FROM scratch\n"), "bin/x": []byte("binary")}
	h := contentHash(base, "")
	if h != contentHash(map[string][]byte{"bin/x": []byte("binary"), "Dockerfile": []byte("FROM scratch\n")}, "") {
		t.Fatal("hash depends on map order")
	}
	for name, files := range map[string]map[string][]byte{
		"binary":     {"Dockerfile": []byte("FROM scratch\n"), "bin/x": []byte("binarY")},
		"dockerfile": {"Dockerfile": []byte("FROM scratch\nENV A=1\n"), "bin/x": []byte("binary")},
		"file name":  {"Dockerfile": []byte("FROM scratch\n"), "bin/y": []byte("binary")},
	} {
		if contentHash(files, "") == h {
			t.Errorf("changing the %s does not change the hash", name)
		}
	}
	if contentHash(base, "prebuilt") == h {
		t.Error("changing the target does not change the hash")
	}
	if len(h) != 16 {
		t.Errorf("hash %q: want 16 hex digits", h)
	}
}

func TestFromBinaryRejectsBadInput(t *testing.T) {
	if _, err := FromBinary(t.Context(), "/nonexistent/binary", "x"); err == nil {
		t.Error("missing binary: want an error")
	}
	if _, err := FromBinary(t.Context(), "/nonexistent/binary", "Bad:Name"); err == nil || !strings.Contains(err.Error(), "invalid image name") {
		t.Errorf("bad name: got %v", err)
	}
}
