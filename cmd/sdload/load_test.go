package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/server"
)

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"http://127.0.0.1:7860", true},
		{"http://localhost:80/x", true},
		{"http://[::1]:7860", true},
		{"http://127.0.0.2:1", true},
		{"http://192.0.2.1:7860", false},
		{"http://example.com", false},
		{"http://0.0.0.0:7860", false},
	}
	for _, tc := range tests {
		err := CheckLoopback(tc.url)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrNotLoopback)) {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
}

func TestPercentile(t *testing.T) {
	r := &LoadReport{Elapsed: 2 * time.Second, OK: 10}
	for i := 10; i >= 1; i-- {
		r.Latencies = append(r.Latencies, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5 * time.Millisecond}, {90, 9 * time.Millisecond}, {100, 10 * time.Millisecond}, {0, time.Millisecond}} {
		if got := r.Percentile(tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := r.Throughput(); got != 5 {
		t.Errorf("throughput %v, want 5", got)
	}
	if (&LoadReport{}).Percentile(50) != 0 {
		t.Errorf("empty report percentile")
	}
}

func TestRunRefusesRemote(t *testing.T) {
	var out, errb strings.Builder
	err := run(t.Context(), []string{"-url", "http://192.0.2.1:7860"}, &out, &errb)
	if !errors.Is(err, ErrNotLoopback) {
		t.Errorf("load against a non-loopback URL: %v, want ErrNotLoopback", err)
	}
}

// TestLoad sends a bounded concurrent load to one service on the default
// model with a small queue: every request is answered once, either 200 or
// 429, and every accepted request completes. SDPIPE_LOAD=1 runs a longer
// load.
func TestLoad(t *testing.T) {
	testenv.RequireORT(t)
	clients, requests, queue, limit := 12, 48, 4, 30*time.Second
	if os.Getenv("SDPIPE_LOAD") != "" {
		clients, requests, queue, limit = 64, 2000, 32, 3*time.Minute
	}
	dir, err := models.DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := sd.Open(t.Context(), dir, sd.WithBatching(4, 20*time.Millisecond), sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	srv, err := server.New(m, server.Config{MaxQueue: queue, FastSteps: 4})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	rep, err := RunLoad(t.Context(), LoadConfig{
		URL: ts.URL, Body: []byte(`{"prompt":"load","quality":"fast","seed":-1}`),
		Clients: clients, Requests: requests, Duration: limit, Backoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients, queue %d:\n%s", clients, queue, rep)
	if rep.Sent != requests || rep.OK+rep.Rejected != rep.Sent || !rep.AllAcceptedCompleted() {
		t.Errorf("sent %d of %d: %d ok + %d rejected, %d failed %v", rep.Sent, requests, rep.OK, rep.Rejected, rep.Failed, rep.Errors)
	}
	if rep.OK == 0 {
		t.Errorf("nothing completed")
	}
	if got := testenv.Metric(t, ts.URL, "sdpipe_rejected_queue_full_total"); got != float64(rep.Rejected) {
		t.Errorf("server counted %v 429s, client %d", got, rep.Rejected)
	}
	if got := testenv.Metric(t, ts.URL, "sdpipe_admitted"); got != 0 {
		t.Errorf("%v generations still admitted after the load", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
