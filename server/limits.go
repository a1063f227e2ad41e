package server

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Limits on what one request or connection may hold. They keep a slow,
// large or hostile client from taking the service down; every refusal is
// a status in the JSON error shape.
//
//   - a body larger than MaxBodyBytes: 413, from Content-Length before a
//     byte of the body is read, else as soon as the body passes it;
//   - bodies being read all together past MaxBodyMemory: 429 with
//     Retry-After, before the body is read;
//   - a body that does not arrive within BodyTimeout, or pauses longer
//     than BodyIdleTimeout: 408, and the connection is closed;
//   - a POST whose Content-Type is not application/json: 415;
//   - past MaxConns open connections, a new one gets a 503 with
//     Retry-After and is closed (Serve only).
//
// A refusal sent before the body is read closes the connection, so that
// the answer does not wait for the client to send a body nobody reads.

// bodyBudget bounds the bytes of request bodies being read at once, over
// all requests.
type bodyBudget struct {
	mu         sync.Mutex
	used, size int64
}

func (b *bodyBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.size {
		return false
	}
	b.used += n
	return true
}

func (b *bodyBudget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *bodyBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// refuseEarly marks a response sent before the request's body was read:
// the connection closes after it instead of reading (discarding) the rest
// of the body, which a slow client makes last as long as it likes. The
// read deadline in the past makes net/http's discard stop at once.
func refuseEarly(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
}

// requireJSON refuses a request body that is not application/json: a form
// or text/plain body is what a cross-site page can make a browser send
// without the page's origin being asked.
func requireJSON(r *http.Request) error {
	if ce := r.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		return &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Msg: fmt.Sprintf("Content-Encoding %s: send the body uncompressed", ce)}
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && mt == "application/json" {
		return nil
	}
	if ct == "" {
		ct = "none"
	}
	return &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Msg: fmt.Sprintf("Content-Type %s: send the body as application/json", ct)}
}

// readBody reads r's body under the limits above. release gives its bytes
// back to the budget.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) (b []byte, release func(), err error) {
	return s.readBodyOf(w, r, requireJSON)
}

// readBodyOf is readBody for a body that check accepts (its media type).
func (s *Server) readBodyOf(w http.ResponseWriter, r *http.Request, check func(*http.Request) error) (b []byte, release func(), err error) {
	if err := check(r); err != nil {
		refuseEarly(w, r)
		return nil, nil, err
	}
	limit := s.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		refuseEarly(w, r)
		return nil, nil, tooLarge(limit)
	}
	// the reservation: the declared length, else the limit (a chunked body)
	want := r.ContentLength
	if want < 0 {
		want = limit
	}
	if !s.bodies.take(want) {
		refuseEarly(w, r)
		s.met.rejectedBodies()
		return nil, nil, &apiError{Status: http.StatusTooManyRequests, Type: "rate_limit", RetryAfter: 1,
			Msg: fmt.Sprintf("the request bodies being read fill the server's body memory (%d MiB); retry later", s.cfg.MaxBodyMemory>>20)}
	}
	var once sync.Once
	release = func() { once.Do(func() { s.bodies.give(want) }) }

	rc := http.NewResponseController(w)
	end := time.Now().Add(s.cfg.BodyTimeout)
	body := http.MaxBytesReader(w, r.Body, limit)
	buf := make([]byte, 0, min(want, 64<<10)+1)
	for {
		if len(buf) == cap(buf) { // grow, never past the reservation
			nb := make([]byte, len(buf), min(2*int64(cap(buf)), want+1))
			copy(nb, buf)
			buf = nb
		}
		_ = rc.SetReadDeadline(minTime(end, time.Now().Add(s.cfg.BodyIdleTimeout)))
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			release()
			refuseEarly(w, r) // the rest of the body is not read
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, nil, tooLarge(limit)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, nil, &apiError{Status: http.StatusRequestTimeout, Type: "invalid_request_error",
					Msg: fmt.Sprintf("the request body did not arrive in time (%v in all, %v without a byte at most)", s.cfg.BodyTimeout, s.cfg.BodyIdleTimeout)}
			}
			return nil, nil, badRequest("", "reading the request body: %v", err)
		}
	}
	// the deadline must be gone before the handler runs on: a stale one
	// fails the connection's background read, which cancels the request
	_ = rc.SetReadDeadline(time.Time{})
	return buf, release, nil
}

func tooLarge(limit int64) error {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Msg: fmt.Sprintf("request body is larger than %d bytes", limit)}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// connLimiter is a listener that holds at most max connections open: past
// it, a new connection gets a 503 with Retry-After and is closed at once,
// so that the service answers instead of leaving clients in the backlog.
type connLimiter struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitedConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		l.refused.Add(1)
		// a fresh socket's send buffer takes this at once; the deadline
		// keeps a broken peer from stalling the accept loop
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = io.WriteString(c, tooManyConns)
		_ = c.Close()
	}
}

const tooManyConnsBody = `{"error":{"message":"too many open connections; retry later","type":"unavailable","code":503}}` + "\n"

var tooManyConns = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n" +
	fmt.Sprintf("Content-Length: %d\r\n\r\n", len(tooManyConnsBody)) + tooManyConnsBody

type limitedConn struct {
	net.Conn
	l    *connLimiter
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
