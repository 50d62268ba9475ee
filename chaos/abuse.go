package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// AbuseConfig tells the protocol-abuse injector the server's limits.
type AbuseConfig struct {
	// MaxMessageBytes is the server's limits.max_message_bytes.
	MaxMessageBytes int
	// HandshakeTimeout is the server's limits.handshake_timeout.
	HandshakeTimeout time.Duration
	// Slowloris is the number of slowloris upgrade requests (default 20).
	Slowloris int
	// ForbiddenOrigin, when set, is an Origin the server does not allow
	// (expect 403).
	ForbiddenOrigin string
}

// InvalidCloseCodes are the close codes a client must not send (RFC 6455
// §7.4): wsd answers each with 1002.
var InvalidCloseCodes = []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535}

// Abuse runs every protocol-abuse case and returns one invariant per
// case: the documented close code or HTTP status against the observed
// one. Cases run concurrently; the run is bounded by the handshake
// timeout plus 30s.
func Abuse(ctx context.Context, t Target, cfg AbuseConfig) []Invariant {
	if cfg.Slowloris == 0 {
		cfg.Slowloris = 20
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout+30*time.Second)
	defer cancel()
	type cas struct {
		name, want string
		run        func() (got string, pass bool)
	}
	closeCase := func(name string, send func(c *Conn) error, want uint16) cas {
		return cas{name, fmt.Sprintf("close %d", want), func() (string, bool) {
			code, err := abuseFrame(ctx, t.EchoURL(), send)
			if err != nil {
				return err.Error(), false
			}
			return fmt.Sprintf("close %d", code), code == want
		}}
	}
	var cases []cas
	for _, code := range InvalidCloseCodes {
		if code == 0 {
			continue
		}
		cases = append(cases, closeCase(fmt.Sprintf("close frame with code %d", code),
			func(c *Conn) error { return c.WriteClose(code, "") }, 1002))
	}
	cases = append(cases,
		closeCase("close frame with a 1-byte payload", func(c *Conn) error { return c.WriteFrame(true, OpClose, []byte{0x03}) }, 1002),
		closeCase("close frame with a non-UTF-8 reason", func(c *Conn) error { return c.WriteClose(1000, "\xff\xfe") }, 1002),
		closeCase("close frame 1000 (valid)", func(c *Conn) error { return c.WriteClose(1000, "bye") }, 1000),
		closeCase("close frame 3000 (valid)", func(c *Conn) error { return c.WriteClose(3000, "") }, 3000),
		closeCase("text message with invalid UTF-8", func(c *Conn) error { return c.WriteMessage(OpText, []byte("ok \xc3\x28 bad")) }, 1007),
		closeCase(fmt.Sprintf("message of max_message_bytes+1 (%d bytes)", cfg.MaxMessageBytes+1),
			func(c *Conn) error { return c.WriteMessage(OpBinary, make([]byte, cfg.MaxMessageBytes+1)) }, 1009),
		closeCase("unmasked client frame", func(c *Conn) error {
			_, err := c.NetConn().Write([]byte{0x81, 0x02, 'h', 'i'})
			return err
		}, 1002),
		closeCase("reserved opcode 0x3", func(c *Conn) error { return c.WriteFrame(true, 0x3, []byte("x")) }, 1002),
		closeCase("64-bit length with the top bit set (the 14-byte crash frame)", func(c *Conn) error {
			_, err := c.NetConn().Write(CrashFrame)
			return err
		}, 1002),
		closeCase("the 14-byte crash frame as a continuation", func(c *Conn) error {
			if err := c.WriteFrame(false, OpBinary, []byte("start")); err != nil {
				return err
			}
			_, err := c.NetConn().Write(append([]byte{0x80}, CrashFrame[1:]...))
			return err
		}, 1002),
		cas{"the 14-byte crash frame on a topic", "close 1002", func() (string, bool) {
			code, err := abuseFrame(ctx, t.TopicURL("abuse"), func(c *Conn) error {
				_, err := c.NetConn().Write(CrashFrame)
				return err
			})
			if err != nil {
				return err.Error(), false
			}
			return fmt.Sprintf("close %d", code), code == 1002
		}},
		closeCase("5 bytes declared in the 8-byte length form", func(c *Conn) error {
			_, err := c.NetConn().Write([]byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'})
			return err
		}, 1002),
		cas{"text, RSV2 frame and ping in one write", "the text echoed, then close 1002", func() (string, bool) {
			c, err := Dial(ctx, t.EchoURL())
			if err != nil {
				return err.Error(), false
			}
			defer c.Close()
			b := append(maskedText("Hello"), 0xa1, 0x80, 0, 0, 0, 0) // text with RSV2, empty
			b = append(b, 0x89, 0x80, 0, 0, 0, 0)                    // ping
			if _, err := c.NetConn().Write(b); err != nil {
				return err.Error(), false
			}
			code, msgs, err := c.ReadUntilClose(10 * time.Second)
			if code == 0 {
				return fmt.Sprintf("no close frame: %v", err), false
			}
			return fmt.Sprintf("%d echoed, then close %d", msgs, code), msgs == 1 && code == 1002
		}},
		closeCase("fragmented ping", func(c *Conn) error { return c.WriteFrame(false, OpPing, []byte("x")) }, 1002),
	)
	statusCase := func(name string, path string, header map[string]string, want int) cas {
		return cas{name, fmt.Sprintf("HTTP %d", want), func() (string, bool) {
			st, err := rawUpgrade(ctx, t.WS, path, header)
			if err != nil {
				return err.Error(), false
			}
			return fmt.Sprintf("HTTP %d", st), st == want
		}}
	}
	good := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
	with := func(k, v string) map[string]string {
		h := map[string]string{}
		for a, b := range good {
			h[a] = b
		}
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
		return h
	}
	cases = append(cases,
		statusCase("upgrade without Sec-WebSocket-Key", "/ws/echo", with("Sec-WebSocket-Key", ""), 400),
		statusCase("upgrade with Sec-WebSocket-Version 8", "/ws/echo", with("Sec-WebSocket-Version", "8"), 400),
		statusCase("plain GET without Upgrade", "/ws/echo", with("Upgrade", ""), 400),
		statusCase("invalid topic name", "/ws/topics/"+url.PathEscape("no spaces!"), good, 400),
		statusCase("topic name over 128 characters", "/ws/topics/"+strings.Repeat("t", 129), good, 400),
	)
	// Hostile handshakes: each would be a 101 to a lax server.
	rawCase := func(name, req string) cas {
		return cas{name, "HTTP 400", func() (string, bool) {
			st, _, err := rawRequest(ctx, t.WS, req)
			if err != nil {
				return err.Error(), false
			}
			return fmt.Sprintf("HTTP %d", st), st == 400
		}}
	}
	// A request body that is a WebSocket frame: a server that parses it
	// as frames echoes it, and behind a proxy (which forwards it as the
	// request's body) that is request smuggling.
	smuggleCase := func(name, req string) cas {
		return cas{name, "HTTP 400, nothing echoed", func() (string, bool) {
			st, rest, err := rawRequest(ctx, t.WS, req)
			if err != nil {
				return err.Error(), false
			}
			echoed := strings.Contains(rest, "SMUGGLED")
			return fmt.Sprintf("HTTP %d, echoed %v", st, echoed), st == 400 && !echoed
		}}
	}
	upgradeHead := func(path, proto string, extra ...string) string {
		return "GET " + path + " " + proto + "\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + strings.Join(extra, "") + "\r\n"
	}
	frame := string(maskedText("SMUGGLED")) // 14 bytes
	cases = append(cases,
		statusCase("Sec-WebSocket-Key not base64 of 16 bytes", "/ws/echo", with("Sec-WebSocket-Key", strings.Repeat("!", 24)), 400),
		rawCase("two Sec-WebSocket-Key headers", upgradeHead("/ws/echo", "HTTP/1.1", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n")),
		rawCase("two Sec-WebSocket-Version headers", upgradeHead("/ws/echo", "HTTP/1.1", "Sec-WebSocket-Version: 13\r\n")),
		rawCase("HTTP/1.0 upgrade", upgradeHead("/ws/echo", "HTTP/1.0")),
		smuggleCase("upgrade with a Content-Length body (a frame)", upgradeHead("/ws/echo", "HTTP/1.1", "Content-Length: 14\r\n")+frame),
		smuggleCase("upgrade with a chunked body (a frame)",
			upgradeHead("/ws/echo", "HTTP/1.1", "Transfer-Encoding: chunked\r\n")+"e\r\n"+frame+"\r\n0\r\n\r\n"),
		statusCase("topic .", "/ws/topics/.", good, 400),
		statusCase("topic ..", "/ws/topics/..", good, 400),
		statusCase("topic %2e%2e", "/ws/topics/%2e%2e", good, 400),
	)
	if cfg.ForbiddenOrigin != "" {
		cases = append(cases, statusCase("forbidden Origin", "/ws/echo", with("Origin", cfg.ForbiddenOrigin), 403))
	}
	cases = append(cases, cas{
		fmt.Sprintf("%d slowloris upgrades trickling a header byte every 200ms", cfg.Slowloris),
		fmt.Sprintf("all cut within handshake_timeout (%s) + 5s, none before 0.9×", cfg.HandshakeTimeout),
		func() (string, bool) { return slowloris(ctx, t.WS, cfg.Slowloris, cfg.HandshakeTimeout) },
	})

	out := make([]Invariant, len(cases))
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, pass := c.run()
			out[i] = Invariant{Name: c.name, Want: c.want, Got: got, Pass: pass}
		}()
	}
	wg.Wait()
	return out
}

// CrashFrame is a binary frame whose 64-bit length has the top bit set:
// gws v1.8.9 alone turns it into a negative length and panics, ending
// the process; wsd must close the connection with 1002.
var CrashFrame = []byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03, 0x04}

// abuseFrame connects, lets send misbehave, and returns the close code
// the server answers with (an error if the connection ends without one).
func abuseFrame(ctx context.Context, url string, send func(*Conn) error) (uint16, error) {
	c, err := Dial(ctx, url)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := send(c); err != nil {
		return 0, err
	}
	code, _, err := c.ReadUntilClose(10 * time.Second)
	if code == 0 {
		return 0, fmt.Errorf("no close frame: %v", err)
	}
	return code, nil
}

// rawUpgrade sends an upgrade request with exactly the given headers and
// returns the HTTP status.
func rawUpgrade(ctx context.Context, base, path string, header map[string]string) (int, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: {host}\r\n", path)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	st, _, err := rawRequest(ctx, base, b.String())
	return st, err
}

// rawRequest sends req ("{host}" replaced by base's host:port) on a new
// connection and returns the response status and, for a refusal, what
// the server sent after the status line until it closed (10 s at most;
// after a 101, whatever arrives within 1 s, e.g. an echo).
func rawRequest(ctx context.Context, base, req string) (int, string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return 0, "", fmt.Errorf("parse %q: %w", base, err)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return 0, "", fmt.Errorf("dial: %w", err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, strings.ReplaceAll(req, "{host}", u.Host)); err != nil {
		return 0, "", fmt.Errorf("write: %w", err)
	}
	var status int
	line := make([]byte, 12)
	if _, err := io.ReadFull(nc, line); err != nil {
		return 0, "", fmt.Errorf("read status: %w", err)
	}
	// net/http answers an HTTP/1.0 request in HTTP/1.0.
	if _, err := fmt.Sscanf(string(line[len("HTTP/1.x"):]), " %d", &status); err != nil || !strings.HasPrefix(string(line), "HTTP/1.") {
		return 0, "", fmt.Errorf("status line %q: %v", line, err)
	}
	if status == 101 {
		_ = nc.SetReadDeadline(time.Now().Add(time.Second))
		rest, _ := io.ReadAll(nc)
		return status, string(rest), nil
	}
	rest, err := io.ReadAll(nc)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return status, string(rest), fmt.Errorf("after HTTP %d the server did not close: %w", status, err)
	}
	return status, string(rest), nil
}

// maskedText is one final, masked text frame (payload under 126 bytes).
func maskedText(payload string) []byte {
	mask := [4]byte{0x5a, 0x17, 0xc3, 0x08}
	f := []byte{0x81, 0x80 | byte(len(payload)), mask[0], mask[1], mask[2], mask[3]}
	for i := 0; i < len(payload); i++ {
		f = append(f, payload[i]^mask[i%4])
	}
	return f
}

// slowloris opens n connections that send the request line and then one
// header byte every 200ms forever; the server must cut each one at its
// handshake timeout.
func slowloris(ctx context.Context, base string, n int, timeout time.Duration) (string, bool) {
	u, err := url.Parse(base)
	if err != nil {
		return err.Error(), false
	}
	limit := timeout + 5*time.Second
	cut := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", u.Host)
			if err != nil {
				errs[i] = err
				return
			}
			defer nc.Close()
			start := time.Now()
			if _, err := io.WriteString(nc, "GET /ws/echo HTTP/1.1\r\nHost: "+u.Host+"\r\nX-Slow: "); err != nil {
				errs[i] = err
				return
			}
			// The server cuts us by closing: a write then fails, or a read
			// sees EOF. Reads run beside the trickle.
			closed := make(chan struct{})
			go func() {
				_, _ = io.Copy(io.Discard, nc)
				close(closed)
			}()
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-closed:
					cut[i] = time.Since(start)
					return
				case <-tick.C:
					if time.Since(start) > limit {
						errs[i] = fmt.Errorf("still open after %s", limit)
						return
					}
					if _, err := nc.Write([]byte("a")); err != nil {
						cut[i] = time.Since(start)
						return
					}
				case <-ctx.Done():
					errs[i] = ctx.Err()
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err.Error(), false
	}
	lo, hi := cut[0], cut[0]
	for _, d := range cut {
		lo, hi = min(lo, d), max(hi, d)
	}
	pass := lo >= timeout*9/10 && hi <= limit
	return fmt.Sprintf("%d cut after %.2fs–%.2fs", n, lo.Seconds(), hi.Seconds()), pass
}
