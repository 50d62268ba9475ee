package natsbus

import "strings"

// subject maps a topic to its NATS subject: prefix.t.<token>. A topic
// may contain '.', NATS's token separator, so it is encoded as exactly
// one token: '_' becomes "__" and '.' becomes "_-", every other topic
// character ([A-Za-z0-9-]) stays. That code is prefix-free ('_' is
// always followed by '_' or '-'), so the mapping is injective: "room"
// and "room.one" (room_-one) are different single-token subjects, and a
// subscriber of one never sees the other. The result uses only
// [A-Za-z0-9_-], NATS's recommended subject characters; the 't' token
// leaves room for other kinds of subjects under the same prefix.
//
// topic must be valid (service.ValidTopic); the Server refuses others.
func subject(prefix, topic string) string {
	var b strings.Builder
	b.Grow(len(prefix) + 3 + 2*len(topic))
	b.WriteString(prefix)
	b.WriteString(".t.")
	for i := 0; i < len(topic); i++ {
		switch c := topic[i]; c {
		case '_':
			b.WriteString("__")
		case '.':
			b.WriteString("_-")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
