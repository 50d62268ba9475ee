package natsbus

import (
	"strings"
	"testing"

	"github.com/wsd-dev/wsd/service"
)

// decodeToken inverts subject's topic encoding; it fails on a token
// subject cannot produce. It exists to prove the mapping injective.
func decodeToken(tok string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c != '_' {
			b.WriteByte(c)
			continue
		}
		if i+1 == len(tok) {
			return "", false
		}
		i++
		switch tok[i] {
		case '_':
			b.WriteByte('_')
		case '-':
			b.WriteByte('.')
		default:
			return "", false
		}
	}
	return b.String(), true
}

// checkSubject asserts that subject(prefix, topic) is a valid literal
// NATS subject (no wildcard, no empty token, recommended characters
// only) of the prefix's tokens plus "t" plus exactly one token that
// decodes back to topic.
func checkSubject(t *testing.T, prefix, topic string) string {
	t.Helper()
	s := subject(prefix, topic)
	if !strings.HasPrefix(s, prefix+".t.") {
		t.Fatalf("subject(%q, %q) = %q: not under %q", prefix, topic, s, prefix+".t.")
	}
	tokens := strings.Split(s, ".")
	if want := strings.Count(prefix, ".") + 3; len(tokens) != want {
		t.Fatalf("subject(%q, %q) = %q has %d tokens, want %d (the topic must be one token)", prefix, topic, s, len(tokens), want)
	}
	for _, tok := range tokens {
		if tok == "" {
			t.Fatalf("subject(%q, %q) = %q has an empty token", prefix, topic, s)
		}
		for i := 0; i < len(tok); i++ {
			if !tokenChar(tok[i]) {
				t.Fatalf("subject(%q, %q) = %q: character %q outside [A-Za-z0-9_-]", prefix, topic, s, tok[i])
			}
		}
	}
	if back, ok := decodeToken(tokens[len(tokens)-1]); !ok || back != topic {
		t.Fatalf("subject(%q, %q) = %q decodes to %q (ok %v): not injective", prefix, topic, s, back, ok)
	}
	return s
}

func TestSubject(t *testing.T) {
	tests := []struct{ prefix, topic, want string }{
		{"wsd", "room", "wsd.t.room"},
		{"wsd", "room.one", "wsd.t.room_-one"},
		{"wsd", "room_-one", "wsd.t.room__-one"},
		{"wsd", ".", "wsd.t._-"},
		{"wsd", "..", "wsd.t._-_-"},
		{"wsd", ".a", "wsd.t._-a"},
		{"wsd", "a.", "wsd.t.a_-"},
		{"wsd", "_", "wsd.t.__"},
		{"wsd", "__-", "wsd.t.____-"},
		{"wsd", "A-Z_0.9", "wsd.t.A-Z__0_-9"},
		{"prod.eu-1", "room", "prod.eu-1.t.room"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := checkSubject(t, tt.prefix, tt.topic)
		if got != tt.want {
			t.Errorf("subject(%q, %q) = %q, want %q", tt.prefix, tt.topic, got, tt.want)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("topics %q and %q share subject %q", other, tt.topic, got)
		}
		seen[got] = tt.topic
	}
	long := strings.Repeat(".", 128)
	if !service.ValidTopic(long) {
		t.Fatal("128 dots should be a valid topic")
	}
	checkSubject(t, "wsd", long)
}

// FuzzSubject: for every pair of valid topics, each maps to a valid
// one-token subject that decodes back to it, and different topics map
// to different subjects.
func FuzzSubject(f *testing.F) {
	for _, s := range [][2]string{{"room", "room.one"}, {"..", "."}, {".a", "_-a"}, {"a_", "a."}, {"__", "_-"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if !service.ValidTopic(a) || !service.ValidTopic(b) {
			return
		}
		sa, sb := checkSubject(t, "wsd", a), checkSubject(t, "wsd", b)
		if (a == b) != (sa == sb) {
			t.Fatalf("topics %q, %q -> subjects %q, %q: the mapping must be injective", a, b, sa, sb)
		}
	})
}
