package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTokenBeforeBody is #16 defect 3: a request without the token was
// answered 401 only once its whole body had arrived, so a slow client held
// the connection as long as it liked.
func TestTokenBeforeBody(t *testing.T) {
	_, ts := newServer(t, Config{Token: "s3cret"})
	c := dialRaw(t, ts.URL)
	c.send(t, "POST", "/sdapi/v1/txt2img", 100000, `{"prompt":`, "Content-Type", "application/json")
	r := c.response(t, 3*time.Second)
	if r.code != http.StatusUnauthorized {
		t.Fatalf("no token, body not sent: got %d %s, want 401 at once", r.code, r.body)
	}
	if !c.closed(3 * time.Second) {
		t.Errorf("the connection stays open after the early 401: the unread body would be taken as the next request")
	}
	if g := post(t, ts.URL+"/sdapi/v1/txt2img", goodRequest, "Authorization", "Bearer s3cret"); g.code != http.StatusOK {
		t.Errorf("good request after: %d %s", g.code, g.body)
	}
}

// TestContentLengthBeforeBody is #16 defect 3: a body declared larger than
// the limit is refused from its Content-Length, before it is read.
func TestContentLengthBeforeBody(t *testing.T) {
	_, ts := newServer(t, Config{MaxBodyBytes: 1 << 20})
	c := dialRaw(t, ts.URL)
	c.send(t, "POST", "/sdapi/v1/txt2img", 20<<20, `{"prompt":"`, "Content-Type", "application/json")
	r := c.response(t, 3*time.Second)
	if r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("20 MB declared, 11 bytes sent: got %d %s, want 413 at once", r.code, r.body)
	}
	if msg, _, _ := r.apiErr(t); !strings.Contains(msg, "larger than 1048576 bytes") {
		t.Errorf("message %q does not name the limit", msg)
	}
}

// TestSlowBody is #16 defect 3: a body that pauses too long, or trickles
// in past the body timeout, gets 408 and its connection closed, instead
// of holding a connection (and a file descriptor) for ever.
func TestSlowBody(t *testing.T) {
	_, ts := newServer(t, Config{BodyIdleTimeout: 300 * time.Millisecond, BodyTimeout: 1500 * time.Millisecond})
	t.Run("pause", func(t *testing.T) {
		c := dialRaw(t, ts.URL)
		start := time.Now()
		c.send(t, "POST", "/sdapi/v1/txt2img", 1000, `{"prompt":"`, "Content-Type", "application/json")
		r := c.response(t, 3*time.Second)
		if r.code != http.StatusRequestTimeout {
			t.Fatalf("a body that stops: got %d %s, want 408", r.code, r.body)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("the 408 took %v, want about the 300ms idle timeout", d)
		}
		if !c.closed(2 * time.Second) {
			t.Errorf("the connection stays open after a body timeout")
		}
	})
	t.Run("trickle", func(t *testing.T) {
		c := dialRaw(t, ts.URL)
		start := time.Now()
		c.send(t, "POST", "/sdapi/v1/txt2img", 100000, `{"prompt":"`, "Content-Type", "application/json")
		stop := make(chan struct{})
		defer close(stop)
		go func() { // a byte every 100ms: never idle for 300ms
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					if _, err := c.Write([]byte("a")); err != nil {
						return
					}
				}
			}
		}()
		r := c.response(t, 5*time.Second)
		if r.code != http.StatusRequestTimeout {
			t.Fatalf("a trickling body: got %d %s, want 408", r.code, r.body)
		}
		if d := time.Since(start); d < 1400*time.Millisecond || d > 4*time.Second {
			t.Errorf("the 408 came after %v, want about the 1.5s body timeout", d)
		}
	})
	if g := post(t, ts.URL+"/sdapi/v1/txt2img", goodRequest); g.code != http.StatusOK {
		t.Errorf("good request after: %d %s", g.code, g.body)
	}
}

// TestConnectionBound is #16 defect 3: past MaxConns open connections, a
// new one is answered 503 with Retry-After at once (not left to time out
// in the backlog, nor to exhaust the file descriptors), and the service
// serves again once connections close.
func TestConnectionBound(t *testing.T) {
	s := newUnstarted(t, Config{MaxConns: 8})
	base, _ := serveOn(t, s)
	var held []*rawConn
	for range 8 {
		c := dialRaw(t, base)
		c.send(t, "GET", "/healthz", -1, "") // a keep-alive connection
		if r := c.response(t, 3*time.Second); r.code != http.StatusOK {
			t.Fatalf("healthz: %d", r.code)
		}
		held = append(held, c)
	}
	waitFor(t, "8 connections open", func() bool { return s.conns.open.Load() == 8 })
	c := dialRaw(t, base)
	c.send(t, "GET", "/healthz", -1, "")
	r := c.response(t, 3*time.Second)
	if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("the 9th connection: %d %v %s, want 503 with Retry-After", r.code, r.header, r.body)
	}
	if msg, _, _ := r.apiErr(t); !strings.Contains(msg, "too many open connections") {
		t.Errorf("message %q", msg)
	}
	for _, c := range held {
		c.Close()
	}
	waitFor(t, "the connections to close", func() bool { return s.conns.open.Load() == 0 })
	if g := post(t, base+"/sdapi/v1/txt2img", goodRequest); g.code != http.StatusOK {
		t.Errorf("good request after: %d %s", g.code, g.body)
	}
	m := string(get(t, base+"/metrics").body)
	if !strings.Contains(m, "sdpipe_rejected_connections_total 1\n") {
		t.Errorf("metrics do not count the refused connection")
	}
}

// TestBodyMemory is #16 defect 4: bodies being read are bounded in total,
// not only one by one: past MaxBodyMemory a request gets 429 with
// Retry-After before its body is read.
func TestBodyMemory(t *testing.T) {
	_, ts := newServer(t, Config{MaxBodyBytes: 512 << 10, MaxBodyMemory: 1 << 20, BodyIdleTimeout: 5 * time.Second})
	var held []*rawConn
	for i := range 2 {
		c := dialRaw(t, ts.URL)
		c.send(t, "POST", "/sdapi/v1/img2img", 400<<10, `{"init_images":["`, "Content-Type", "application/json")
		held = append(held, c)
		waitFor(t, fmt.Sprintf("body %d to be reserved", i+1), func() bool {
			return strings.Contains(string(get(t, ts.URL+"/metrics").body), fmt.Sprintf("sdpipe_body_bytes_reading %d\n", (i+1)*400<<10))
		})
	}
	c := dialRaw(t, ts.URL)
	c.send(t, "POST", "/sdapi/v1/img2img", 400<<10, `{"init_images":["`, "Content-Type", "application/json")
	r := c.response(t, 3*time.Second)
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
		t.Fatalf("a third 400 KB body past 1 MB of bodies: %d %s, want 429 with Retry-After", r.code, r.body)
	}
	if msg, _, _ := r.apiErr(t); !strings.Contains(msg, "body memory (1 MiB)") {
		t.Errorf("message %q does not name the limit", msg)
	}
	// a small body still fits beside them
	if g := post(t, ts.URL+"/sdapi/v1/txt2img", goodRequest); g.code != http.StatusOK {
		t.Errorf("good request beside the held bodies: %d %s", g.code, g.body)
	}
	for _, c := range held {
		c.Close()
	}
	waitFor(t, "the reservations to go", func() bool {
		return strings.Contains(string(get(t, ts.URL+"/metrics").body), "sdpipe_body_bytes_reading 0\n")
	})
}
