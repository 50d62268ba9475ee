package telemetry

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// TestCloseReasonNotUTF8: a close reason is client-controlled bytes. The
// span must carry it as valid UTF-8 (bad bytes replaced), in the
// attribute and in the status description, because the OTLP protobuf
// exporter refuses a batch with one invalid string and every span in it
// is lost.
func TestCloseReasonNotUTF8(t *testing.T) {
	f := start(t, fixtureOpts{})
	c := wstest.MustDialRaw(t, f.wsURL("/ws/echo"))
	if err := c.WriteClose(1000, "bye\xff\xfe"); err != nil {
		t.Fatal(err)
	}
	if f, err := c.ReadFrame(10 * time.Second); err != nil || f.Opcode != wstest.OpClose || f.CloseCode() != 1002 {
		t.Fatalf("server answered opcode %#x payload %q (err %v), want close 1002", f.Opcode, f.Payload, err)
	}
	span := f.waitSpan(t, spanSession)
	reason := attrs(span.Attributes())[keyCloseReason].AsString()
	if reason != "bye\uFFFD" {
		t.Errorf("ws.close.reason %q, want %q", reason, "bye\uFFFD")
	}
	var bad []string
	check := func(where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			if kv.Value.Type() == attribute.STRING && !utf8.ValidString(kv.Value.AsString()) {
				bad = append(bad, where+" "+string(kv.Key))
			}
		}
	}
	check("span", span.Attributes())
	for _, ev := range span.Events() {
		check("event "+ev.Name, ev.Attributes)
	}
	if d := span.Status().Description; !utf8.ValidString(d) || !strings.Contains(d, "bye") {
		t.Errorf("status description %q: want valid UTF-8 with the reason", d)
	}
	if len(bad) > 0 {
		t.Errorf("strings that are not UTF-8: %v", bad)
	}
	checkCardinality(t, f.collect(t), []uint16{1000})
}
