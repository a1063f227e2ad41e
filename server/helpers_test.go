package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
)

// The tests share one tiny model (64×64 by default), opened on first use
// and closed by TestMain.
var shared struct {
	once sync.Once
	m    *sd.Model
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.m != nil {
		_ = shared.m.Close()
	}
	os.Exit(code)
}

// openModel opens the generated tiny model with dynamic batching, or skips
// the test when ONNX Runtime is absent.
func openModel(t testing.TB) *sd.Model {
	t.Helper()
	testenv.RequireORT(t)
	shared.once.Do(func() {
		dir, err := models.DefaultDir()
		if err != nil {
			shared.err = err
			return
		}
		shared.m, shared.err = sd.Open(context.Background(), dir, sd.WithBatching(4, 20*time.Millisecond), sd.WithThreads(sd.UNet, 1))
	})
	if shared.err != nil {
		t.Fatalf("opening the tiny model: %v", shared.err)
	}
	return shared.m
}

// newServer starts a Server on the shared model behind an httptest server
// on 127.0.0.1.
func newServer(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	return newServerOn(t, openModel(t), cfg)
}

func newServerOn(t *testing.T, m Engine, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = "test"
	}
	if cfg.MaxSteps == 0 {
		cfg.MaxSteps = 900
	}
	s, err := New(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.Shutdown(ctx) // cancels what a failed test left running
		ts.Close()
	})
	return s, ts
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

// openAIPNG decodes an OpenAI images body and returns its first
// data[].b64_json as a PNG and that PNG's infotext (decodePNG); it fails
// the test when the body holds no image.
func (r response) openAIPNG(t *testing.T) (image.Image, string) {
	t.Helper()
	var out struct {
		Data []struct {
			B64JSON string `json:"b64_json"`
		}
	}
	r.json(t, &out)
	if len(out.Data) == 0 {
		t.Fatalf("no data[] in %s", r.body)
	}
	return decodePNG(t, out.Data[0].B64JSON)
}

// apiErr decodes an error body.
func (r response) apiErr(t *testing.T) (msg, typ, param string) {
	t.Helper()
	var e struct {
		Error struct {
			Message, Type, Param string
			Code                 int
		}
	}
	r.json(t, &e)
	if e.Error.Code != r.code {
		t.Errorf("error body code %d, status %d", e.Error.Code, r.code)
	}
	return e.Error.Message, e.Error.Type, e.Error.Param
}

func do(t *testing.T, ctx context.Context, method, url, body string, hdr ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost && body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{code: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: b}
}

// post sends a JSON body (hdr may name another Content-Type).
func post(t *testing.T, url, body string, hdr ...string) response {
	t.Helper()
	return do(t, t.Context(), http.MethodPost, url, body, append([]string{"Content-Type", "application/json"}, hdr...)...)
}

func get(t *testing.T, url string, hdr ...string) response {
	t.Helper()
	return do(t, t.Context(), http.MethodGet, url, "", hdr...)
}

// decodePNG decodes a base64 PNG and returns it with its parameters.
func decodePNG(t *testing.T, b64 string) (image.Image, string) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("image is not base64: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("image is not a PNG: %v", err)
	}
	params, err := sd.ReadPNGParameters(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("PNG parameters: %v", err)
	}
	return img, params
}

// waitFor polls cond every 10ms until it holds or 20s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// a1111Progress reads /sdapi/v1/progress.
func a1111Progress(t *testing.T, base string) (step, total, jobs int) {
	t.Helper()
	var p struct {
		State struct {
			JobCount      int `json:"job_count"`
			SamplingStep  int `json:"sampling_step"`
			SamplingSteps int `json:"sampling_steps"`
		}
	}
	get(t, base+"/sdapi/v1/progress").json(t, &p)
	return p.State.SamplingStep, p.State.SamplingSteps, p.State.JobCount
}

// admitted returns how many generations s holds.
func admitted(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.active)
}

// rawConn is a client connection that writes requests by hand, for the
// probes that a well-behaved client library does not send.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, base string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

// send writes a request head for method and path with the headers and a
// Content-Length of declared bytes (negative: none), then the first bytes
// of the body.
func (c *rawConn) send(t *testing.T, method, path string, declared int, body string, hdr ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: test\r\n", method, path)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	if declared >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", declared)
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
}

// response reads a response within d; code -1 means none came.
func (c *rawConn) response(t *testing.T, d time.Duration) response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return response{code: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: b}
}

// closed reports whether the server closed the connection within d.
func (c *rawConn) closed(d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.ReadByte()
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// serveOn runs s.Serve on a fresh loopback listener until the test ends;
// stop ends it and returns Serve's error.
func serveOn(t *testing.T, s *Server) (base string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-errc:
			case <-time.After(60 * time.Second):
				serveErr = errors.New("Serve did not return within 60s")
			}
		})
		return serveErr
	}
	t.Cleanup(func() { _ = stop() })
	return "http://" + ln.Addr().String(), stop
}

// newUnstarted returns a Server on the shared model, for Serve.
func newUnstarted(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = "test"
	}
	if cfg.MaxSteps == 0 {
		cfg.MaxSteps = 900
	}
	s, err := New(openModel(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
