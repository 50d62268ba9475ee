package wstest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lxzan/gws"
)

// Client is a gws event handler that records what a well-behaved client
// receives: every data message in order, the pings it answers, and how
// the connection ended. Its methods are safe to call while the read
// loop runs. The zero value records nothing yet and is ready to use;
// DialGWS connects one.
type Client struct {
	gws.BuiltinEventHandler

	// OnData, when set, is called from the read loop with each data
	// message after it is recorded. Set it before the read loop starts.
	OnData func([]byte)

	pings atomic.Int64

	mu     sync.Mutex
	msgs   [][]byte
	closed chan struct{} // made on first use; closed by OnClose
	code   uint16
	err    error
}

// done returns the channel OnClose closes, making it on first use.
// c.mu must be held.
func (c *Client) done() chan struct{} {
	if c.closed == nil {
		c.closed = make(chan struct{})
	}
	return c.closed
}

// OnPing answers a ping with a pong and counts it.
func (c *Client) OnPing(conn *gws.Conn, p []byte) {
	c.pings.Add(1)
	_ = conn.WritePong(p)
}

// OnMessage records a copy of the message's payload.
func (c *Client) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := append([]byte(nil), m.Bytes()...)
	_ = m.Close()
	c.mu.Lock()
	c.msgs = append(c.msgs, b)
	c.mu.Unlock()
	if c.OnData != nil {
		c.OnData(b)
	}
}

// OnClose records why the read loop ended and closes Closed.
func (c *Client) OnClose(_ *gws.Conn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.code = ce.Code
	}
	close(c.done())
}

// Closed returns a channel closed when the read loop has ended.
func (c *Client) Closed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done()
}

// CloseCode returns the code of the server's close frame, or 0 while the
// connection is open or when it ended without one.
func (c *Client) CloseCode() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.code
}

// Err returns what ended the read loop (a *gws.CloseError for a close
// frame), or nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Count returns the number of data messages received so far.
func (c *Client) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// Messages returns the data messages received so far, in order. The
// slice is a copy; the payloads are shared and must not be modified.
func (c *Client) Messages() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.msgs...)
}

// Pings returns the number of pings received (each answered).
func (c *Client) Pings() int64 { return c.pings.Load() }

// DialGWS connects a gws client (1 MiB message limit, UTF-8 checked) to
// url and fails the test (t.Fatalf) if it cannot. Its read loop starts
// now when read is true; a test that wants a client that does not read
// at first passes false and runs conn.ReadLoop itself later. At cleanup
// the connection is closed and, when read is true, its read loop waited
// for.
func DialGWS(t testing.TB, url string, read bool) (*gws.Conn, *Client) {
	t.Helper()
	h := &Client{}
	closed := h.Closed()
	conn, _, err := gws.NewClient(h, &gws.ClientOption{Addr: url, ReadMaxPayloadSize: 1 << 20, CheckUtf8Enabled: true})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() {
		_ = conn.NetConn().Close()
		if read {
			<-closed
		}
	})
	if read {
		go conn.ReadLoop()
	}
	return conn, h
}
