package main

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestRunGracefulShutdown runs the command, sends it a request, then
// cancels its context (what SIGTERM does) while the request runs: the
// request completes, and run shuts the model down and returns nil.
func TestRunGracefulShutdown(t *testing.T) {
	testenv.RequireORT(t)
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var stderr testenv.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-replica", "r1", "-grace", "20s", "-threads", "1", "-max-steps", "400"}, &stderr)
	}()
	base := listening(t, done, &stderr)

	for i := range 2 {
		resp, err := http.Post(base+"/sdapi/v1/txt2img", "application/json", strings.NewReader(`{"steps":3}`))
		if err != nil {
			t.Fatalf("request %d before shutdown: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Replica-ID") != "r1" {
			t.Fatalf("request %d before shutdown: %d, replica %q", i, resp.StatusCode, resp.Header.Get("X-Replica-ID"))
		}
	}

	type result struct {
		code int
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := http.Post(base+"/sdapi/v1/txt2img", "application/json", strings.NewReader(`{"steps":400}`))
		if err != nil {
			inflight <- result{err: err}
			return
		}
		resp.Body.Close()
		inflight <- result{code: resp.StatusCode}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		select {
		case r := <-inflight:
			t.Fatalf("the request ended before the shutdown: %d %v", r.code, r.err)
		default:
		}
		resp, err := http.Get(base + "/sdapi/v1/progress")
		if err == nil {
			var b strings.Builder
			buf := make([]byte, 4096)
			n, _ := resp.Body.Read(buf)
			b.Write(buf[:n])
			resp.Body.Close()
			if regexp.MustCompile(`"sampling_step":[1-9]`).MatchString(b.String()) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the in-flight request did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop() // SIGTERM
	if r := <-inflight; r.err != nil || r.code != http.StatusOK {
		t.Errorf("in-flight request during shutdown: %d %v", r.code, r.err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Errorf("still listening after shutdown")
	}
	if !strings.Contains(stderr.String(), "msg=stopped err=<nil>") {
		t.Errorf("log lacks the clean stop:\n%s", stderr.String())
	}
}

// listening waits up to 30 seconds for run, started with -addr
// 127.0.0.1:0, to log the URL it listens on to stderr, and returns it; it
// fails the test if run returns (on done) first.
func listening(t *testing.T, done <-chan error, stderr *testenv.SyncBuffer) string {
	t.Helper()
	re := regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+)`)
	for deadline := time.Now().Add(30 * time.Second); ; {
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, stderr.String())
		default:
		}
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			return m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no listening line:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
