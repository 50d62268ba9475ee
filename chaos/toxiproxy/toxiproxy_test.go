package toxiproxy

import (
	"strings"
	"testing"
)

func TestRunRejectsADuplicateProxyBeforeStartingAnything(t *testing.T) {
	c, err := Run(t.Context(), "wsd-e2e/toxiproxy:unused", WithProxy("a", "x:1"), WithProxy("a", "y:2"))
	if err == nil || !strings.Contains(err.Error(), `proxy "a" declared twice`) || c != nil {
		t.Fatalf("got %v, %v", c, err)
	}
}
