package service

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzRequestToken: for any Authorization header and query string,
// requestToken never panics; a token it returns is non-empty, bounded,
// free of whitespace, and is literally what the one source carried; a
// request with no source at all is "missing", never "malformed".
func FuzzRequestToken(f *testing.F) {
	f.Add("Bearer a.b.c", "")
	f.Add("", "access_token=a.b.c")
	f.Add("Bearer a.b.c", "access_token=a.b.c")
	f.Add("Basic dXNlcjpwYXNz", "")
	f.Add("bearer   x", "access_token=%zz")
	f.Add("", "access_token=a&access_token=b")
	f.Fuzz(func(t *testing.T, authz, rawQuery string) {
		r := &http.Request{Header: http.Header{}, URL: &url.URL{Path: "/ws/echo", RawQuery: rawQuery}}
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		tok, fail := requestToken(r)
		q := r.URL.Query()["access_token"]
		switch {
		case fail == "" && (tok == "" || len(tok) > maxTokenBytes || strings.ContainsAny(tok, " \t\r\n")):
			t.Fatalf("token %q accepted from %q, %q", tok, authz, rawQuery)
		case fail == "" && authz != "" && !strings.Contains(authz, tok):
			t.Fatalf("token %q is not in the header %q", tok, authz)
		case fail == "" && authz == "" && (len(q) != 1 || q[0] != tok):
			t.Fatalf("token %q is not the query's one access_token %q", tok, q)
		case fail != "" && tok != "":
			t.Fatalf("failure %q with token %q", fail, tok)
		case authz == "" && len(q) == 0 && fail != AuthMissing:
			t.Fatalf("no source: %q, want missing", fail)
		case (authz != "" || len(q) > 0) && fail == AuthMissing:
			t.Fatalf("a source (%q, %q) reported missing", authz, q)
		}
	})
}

// FuzzParseTopics: any claim either parses into patterns that are all
// valid (exact topics or prefixes ending in *) and match only topics
// they should, or fails; it never panics.
func FuzzParseTopics(f *testing.F) {
	for _, s := range []string{`{"sub":["chat.*"],"pub":["news"]}`, `{}`, `null`, `{"sub":["*"]}`,
		`{"sub":"a"}`, `{"sub":[1]}`, `{"sub":["a*b"]}`, `[]`, `{"sub":["a"]}{}`, `{"pub":[""]}`} {
		f.Add([]byte(s), "chat.room")
	}
	f.Fuzz(func(t *testing.T, claim []byte, topic string) {
		tr, err := parseTopics(json.RawMessage(claim))
		if err != nil {
			if len(tr.Sub)+len(tr.Pub) != 0 {
				t.Fatalf("failed parse of %q grants %+v", claim, tr)
			}
			return
		}
		for _, p := range append(append([]string(nil), tr.Sub...), tr.Pub...) {
			if !validPattern(p) {
				t.Fatalf("invalid pattern %q accepted from %q", p, claim)
			}
			prefix, isPrefix := strings.CutSuffix(p, "*")
			want := p == topic || isPrefix && strings.HasPrefix(topic, prefix)
			if got := matchTopic([]string{p}, topic); got != want {
				t.Fatalf("pattern %q on topic %q: %v, want %v", p, topic, got, want)
			}
			if strings.Contains(prefix, "*") {
				t.Fatalf("pattern %q has a * before its end", p)
			}
		}
	})
}
