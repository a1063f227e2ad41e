package server

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServeShutdownUnderLoad is #16 defect 6: with a short grace under
// load, every accepted request ends with a status its client sees: a
// synchronous one gets its result or 503 with Retry-After (not a dropped
// connection), an async job is marked failed and its client can read so,
// and a request sent while draining gets 503 with Retry-After.
func TestServeShutdownUnderLoad(t *testing.T) {
	s := newUnstarted(t, Config{Grace: 300 * time.Millisecond, Linger: 20 * time.Second})
	base, stop := serveOn(t, s)
	const nSync, nJobs = 3, 3
	syncs := make(chan response, nSync)
	for i := range nSync {
		go func() {
			syncs <- post(t, base+"/sdapi/v1/txt2img", fmt.Sprintf(`{"prompt":"long %d","steps":900}`, i))
		}()
	}
	var ids []string
	for i := range nJobs {
		r := post(t, base+"/v1/jobs", fmt.Sprintf(`{"prompt":"job %d","steps":900}`, i))
		if r.code != http.StatusAccepted {
			t.Fatalf("submit: %d %s", r.code, r.body)
		}
		var st jobStatus
		r.json(t, &st)
		ids = append(ids, st.ID)
	}
	waitFor(t, "every request to be admitted and one to run", func() bool {
		step, _, _ := a1111Progress(t, base)
		return admitted(s) == nSync+nJobs && step > 0
	})
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	waitFor(t, "draining", s.Draining)
	if r := post(t, base+"/sdapi/v1/txt2img", goodRequest); r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("a request while draining: %d %v, want 503 with Retry-After", r.code, r.header)
	}
	for range nSync {
		r := <-syncs
		if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("a synchronous request canceled by the shutdown: %d %s, want 503 with Retry-After", r.code, r.body)
		} else if msg, _, _ := r.apiErr(t); !strings.Contains(msg, "shutting down") {
			t.Errorf("message %q", msg)
		}
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			var st jobStatus
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				r := get(t, base+"/v1/jobs/"+id)
				if r.code != http.StatusOK {
					t.Errorf("job %s while shutting down: %d %s", id, r.code, r.body)
					return
				}
				r.json(t, &st)
				if st.Finished != nil {
					break
				}
			}
			if st.Status != stateFailed || !strings.Contains(st.Error, "shutting down") {
				t.Errorf("job %s after the shutdown: %+v, want failed", id, st)
			}
			r := get(t, base+"/v1/jobs/"+id+"/result")
			if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
				t.Errorf("result of job %s: %d %s, want 503 with Retry-After", id, r.code, r.body)
			}
		})
	}
	wg.Wait()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return once every job's end was read")
	}
	if admitted(s) != 0 {
		t.Errorf("work left after Serve returned")
	}
}

// TestServeShutdownSilentConn shuts down while a client holds a connection
// it opened and sent nothing on (what a transport's spare dial leaves):
// Serve must wait for net/http to count it idle and return no error.
func TestServeShutdownSilentConn(t *testing.T) {
	s := newUnstarted(t, Config{Grace: 100 * time.Millisecond})
	base, stop := serveOn(t, s)
	if r := get(t, base+"/ping"); r.code != http.StatusOK {
		t.Fatalf("ping: %d", r.code)
	}
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(100 * time.Millisecond) // the server has accepted it
	if err := stop(); err != nil {
		t.Errorf("Serve with a silent connection open: %v", err)
	}
}
