package server

// Tests of requests over time: progress and interrupt, a full queue,
// disconnects, async jobs, dynamic batching, metrics and shutdown.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/sd"
)

// startLong starts a long A1111 request and waits until it is denoising.
func startLong(t *testing.T, ctx context.Context, ts *httptest.Server) <-chan response {
	t.Helper()
	ch := make(chan response, 1)
	go func() {
		ch <- do(t, ctx, http.MethodPost, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"long","steps":900,"seed":1}`)
	}()
	waitFor(t, "the long request to run", func() bool {
		step, total, _ := a1111Progress(t, ts.URL)
		return step > 0 && total >= 900 // PNDM makes one more model call
	})
	return ch
}

// TestProgressInterrupt: A1111's interrupt ends the running request,
// which returns 200 with its image as far as it got (A1111's semantics).
func TestProgressInterrupt(t *testing.T) {
	_, ts := newServer(t, Config{})
	done := startLong(t, t.Context(), ts)
	_, _, jobs := a1111Progress(t, ts.URL)
	if jobs != 1 {
		t.Errorf("job_count %d, want 1", jobs)
	}
	waitFor(t, "the first step", func() bool { step, _, _ := a1111Progress(t, ts.URL); return step >= 1 })
	if r := post(t, ts.URL+"/sdapi/v1/interrupt", ""); r.code != http.StatusOK {
		t.Fatalf("interrupt: %d", r.code)
	}
	// as A1111 does, the interrupted request answers 200 with what it has
	r := <-done
	if r.code != http.StatusOK {
		t.Fatalf("interrupted request: %d %s, want 200 with the partial image", r.code, r.body)
	}
	var out struct{ Images []string }
	r.json(t, &out)
	if len(out.Images) != 1 {
		t.Fatalf("%d images", len(out.Images))
	}
	if img, _ := decodePNG(t, out.Images[0]); img.Bounds().Dx() != 64 {
		t.Errorf("partial image %v", img.Bounds())
	}
	if _, total, _ := a1111Progress(t, ts.URL); total != 0 {
		t.Errorf("progress after the interrupt shows a job")
	}
}

func TestQueueFull(t *testing.T) {
	s, ts := newServer(t, Config{MaxQueue: 1})
	done := startLong(t, t.Context(), ts)
	r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"steps":2}`)
	if r.code != http.StatusTooManyRequests {
		t.Fatalf("second request: %d %s, want 429", r.code, r.body)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	if r := post(t, ts.URL+"/v1/jobs", `{"steps":2}`); r.code != http.StatusTooManyRequests {
		t.Errorf("async submit past the queue: %d", r.code)
	}
	post(t, ts.URL+"/sdapi/v1/interrupt", "")
	<-done
	waitFor(t, "the slot to free", func() bool { return admitted(s) == 0 })
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"steps":2}`); r.code != http.StatusOK {
		t.Errorf("after the queue drained: %d %s", r.code, r.body)
	}
	if m := get(t, ts.URL+"/metrics"); !strings.Contains(string(m.body), "sdpipe_rejected_queue_full_total 2\n") {
		t.Errorf("metrics do not count the two 429s")
	}
}

func TestDisconnectCancels(t *testing.T) {
	s, ts := newServer(t, Config{})
	m := openModel(t)
	before := m.Metrics().Canceled
	ctx, cancel := context.WithCancel(t.Context())
	done := startLong(t, ctx, ts)
	cancel() // the client goes away
	if r := <-done; r.code != -1 {
		t.Fatalf("client got %d after canceling", r.code)
	}
	waitFor(t, "the engine to cancel the request", func() bool { return m.Metrics().Canceled > before })
	waitFor(t, "the slot to free", func() bool { return admitted(s) == 0 })
	if step, total, _ := a1111Progress(t, ts.URL); total != 0 {
		t.Errorf("progress still shows %d/%d", step, total)
	}
}

func TestAsyncJobs(t *testing.T) {
	_, ts := newServer(t, Config{})
	r := post(t, ts.URL+"/v1/jobs", `{"prompt":"a job","steps":10,"seed":42}`)
	if r.code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", r.code, r.body)
	}
	var st jobStatus
	r.json(t, &st)
	if st.ID == "" || r.header.Get("Location") != "/v1/jobs/"+st.ID {
		t.Fatalf("submit answer %+v, Location %q", st, r.header.Get("Location"))
	}
	waitFor(t, "the job", func() bool {
		get(t, ts.URL+st.StatusURL).json(t, &st)
		return st.Status != stateQueued && st.Status != stateRunning
	})
	if st.Status != stateDone || st.Progress.Step != st.Progress.Total || st.Progress.Total < 10 || st.Progress.Fraction != 1 {
		t.Fatalf("finished status %+v", st)
	}
	res := get(t, ts.URL+st.ResultURL)
	var out struct{ Images []string }
	res.json(t, &out)
	if res.code != http.StatusOK || len(out.Images) != 1 {
		t.Fatalf("result %d with %d images", res.code, len(out.Images))
	}
	if _, p := decodePNG(t, out.Images[0]); !strings.Contains(p, "Seed: 42") {
		t.Errorf("infotext %q", p)
	}
	if r := get(t, ts.URL+"/v1/jobs/nope"); r.code != http.StatusNotFound {
		t.Errorf("unknown job: %d", r.code)
	}
	if r := get(t, ts.URL+"/v1/jobs/nope/result"); r.code != http.StatusNotFound {
		t.Errorf("unknown job result: %d", r.code)
	}
}

// TestJobQueueAndCancel fills the engine so that jobs queue in front of it
// in order, checks what their status says, then cancels them all at once.
func TestJobQueueAndCancel(t *testing.T) {
	s, ts := newServer(t, Config{})
	const n = 12
	ids := make([]string, n)
	order := map[string]int{}
	for i := range ids {
		r := post(t, ts.URL+"/v1/jobs", fmt.Sprintf(`{"prompt":"job %d","steps":900}`, i))
		if r.code != http.StatusAccepted {
			t.Fatalf("submit %d: %d %s", i, r.code, r.body)
		}
		var st jobStatus
		r.json(t, &st)
		ids[i] = st.ID
		order[st.ID] = i
	}
	var waiting []string
	waitFor(t, "jobs to queue", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		waiting = waiting[:0]
		for _, w := range s.waiting {
			waiting = append(waiting, w.id)
		}
		return len(waiting) > 0 && len(s.active) == n && len(waiting) < n
	})
	// the queue is first come, first served
	if !slices.IsSortedFunc(waiting, func(a, b string) int { return order[a] - order[b] }) {
		t.Errorf("queue order %v is not the submit order", waiting)
	}
	var st jobStatus
	get(t, ts.URL+"/v1/jobs/"+waiting[len(waiting)-1]).json(t, &st)
	if st.Status != stateQueued || st.QueuePosition < 1 || st.QueuePosition > len(waiting) {
		t.Errorf("the last queued job's status: %+v (%d queued)", st, len(waiting))
	}
	st = jobStatus{}
	get(t, ts.URL+"/v1/jobs/"+ids[0]).json(t, &st)
	if st.Status != stateRunning || st.QueuePosition != 0 || st.Started == nil {
		t.Errorf("the first job's status: %+v", st)
	}
	if r := get(t, ts.URL+"/v1/jobs/"+ids[n-1]+"/result"); r.code != http.StatusAccepted {
		t.Errorf("result of an unfinished job: %d", r.code)
	}
	// jobs may move on meanwhile, but they are 900 steps long
	if m := get(t, ts.URL+"/metrics"); !regexp.MustCompile(`sdpipe_queue_depth [1-9]`).Match(m.body) {
		t.Errorf("metrics queue depth 0, want about %d", len(waiting))
	}
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			method, path := http.MethodDelete, "/v1/jobs/"+id
			if i%2 == 1 {
				method, path = http.MethodPost, "/v1/jobs/"+id+"/cancel"
			}
			if r := do(t, t.Context(), method, ts.URL+path, ""); r.code != http.StatusOK {
				t.Errorf("cancel %d: %d %s", i, r.code, r.body)
			}
		})
	}
	wg.Wait()
	for i, id := range ids {
		waitFor(t, "the job to stop", func() bool {
			// a fresh value each time: json.Unmarshal keeps the fields a
			// body leaves out (finished, cancel_requested), so a reused one
			// would read the previous job's finish time as this one's
			st = jobStatus{}
			get(t, ts.URL+"/v1/jobs/"+id).json(t, &st)
			return st.Finished != nil
		})
		if st.Status != stateCanceled || st.CancelRequested {
			t.Errorf("job %d after cancel: %+v", i, st)
		}
	}
	r := get(t, ts.URL+"/v1/jobs/"+ids[0]+"/result")
	if _, typ, _ := r.apiErr(t); r.code != http.StatusConflict || typ != "canceled" {
		t.Errorf("result of a canceled job: %d %s", r.code, r.body)
	}
	waitFor(t, "slots to free", func() bool { return admitted(s) == 0 })
}

func TestMemoryJobStoreMax(t *testing.T) {
	m := NewMemoryJobStore(time.Minute, 2)
	defer m.Close()
	now := time.Now()
	for i, age := range []time.Duration{0, 10 * time.Second, 20 * time.Second} {
		id := strconv.Itoa(i)
		if err := m.Put(t.Context(), JobRecord{ID: id, Created: now.Add(-age), Finished: now.Add(-age)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Put(t.Context(), JobRecord{ID: "running", Created: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, id := range []string{"0", "1", "2", "running"} {
		if _, err := m.Get(t.Context(), id); err == nil {
			got = append(got, id)
		} else if !errors.Is(err, ErrJobNotFound) {
			t.Errorf("Get(%s): %v", id, err)
		}
	}
	// the oldest finished one goes; running ones stay
	if diff := cmp.Diff([]string{"0", "1", "running"}, got); diff != "" {
		t.Errorf("jobs kept (-want +got):\n%s", diff)
	}
}

func TestDynamicBatching(t *testing.T) {
	_, ts := newServer(t, Config{})
	m := openModel(t)
	batched := func() bool {
		for size, calls := range m.Metrics().BatchSizes {
			if size > 2 && calls > 0 { // > 2: one request with guidance is already 2
				return true
			}
		}
		return false
	}
	for try := 0; try == 0 || try < 5 && !batched(); try++ {
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				r := post(t, ts.URL+"/sdapi/v1/txt2img", fmt.Sprintf(`{"prompt":"p%d","quality":"fast","seed":%d}`, i, i))
				if r.code != http.StatusOK {
					t.Errorf("status %d", r.code)
				}
			})
		}
		wg.Wait()
	}
	if !batched() {
		t.Errorf("no UNet call held more than one request: %v", m.Metrics().BatchSizes)
	}
	body := string(get(t, ts.URL+"/metrics").body)
	if !regexp.MustCompile(`sdpipe_unet_batches_total\{size="[3-9]"\} [1-9]`).MatchString(body) {
		t.Errorf("metrics lack the batch sizes")
	}
	if !regexp.MustCompile(`sdpipe_generations_by_mode_total\{mode="fast"\} [1-9]`).MatchString(body) {
		t.Errorf("metrics lack the fast mode")
	}
}

// TestMetricsFormat checks every line of /metrics against the text
// exposition format.
func TestMetricsFormat(t *testing.T) {
	_, ts := newServer(t, Config{Load: &sd.LoadReport{
		Open:   map[sd.Component]time.Duration{sd.UNet: 1500 * time.Millisecond, sd.TextEncoder: 250 * time.Millisecond},
		Warmup: map[sd.Component]time.Duration{sd.UNet: 2 * time.Second},
	}})
	post(t, ts.URL+"/sdapi/v1/txt2img", `{"steps":3}`)
	r := get(t, ts.URL+"/metrics")
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	sample := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.eE+-]+$|^[a-z_]+(\{.*\})? \+Inf$`)
	comment := regexp.MustCompile(`^# (HELP [a-z_]+ .+|TYPE [a-z_]+ (counter|gauge|histogram))$`)
	seen := map[string]bool{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(r.body)), "\n") {
		if !sample.MatchString(line) && !comment.MatchString(line) {
			t.Errorf("bad line %q", line)
		}
		seen[strings.FieldsFunc(line, func(c rune) bool { return c == ' ' || c == '{' })[0]] = true
	}
	for _, name := range []string{"sdpipe_queue_depth", "sdpipe_inflight_requests", "sdpipe_unet_batches_total", "sdpipe_stage_seconds_total",
		"sdpipe_images_served_total", "sdpipe_request_duration_seconds_bucket", "sdpipe_http_requests_total"} {
		if !seen[name] {
			t.Errorf("metrics lack %s", name)
		}
	}
	if !strings.Contains(string(r.body), `sdpipe_images_served_total 1`+"\n") {
		t.Errorf("images served is not 1")
	}
	for _, want := range []string{`sdpipe_model_open_seconds{component="unet"} 1.5`, `sdpipe_model_open_seconds{component="text_encoder"} 0.25`, `sdpipe_model_warmup_seconds{component="unet"} 2`} {
		if !strings.Contains(string(r.body), want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestShutdownFinishes(t *testing.T) {
	s, ts := newServer(t, Config{})
	done := make(chan response, 1)
	go func() { done <- post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"finish me","steps":120,"seed":1}`) }()
	waitFor(t, "the request to run", func() bool { step, _, _ := a1111Progress(t, ts.URL); return step > 0 })
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(t.Context()) }()
	waitFor(t, "draining", s.Draining)
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"steps":2}`); r.code != http.StatusServiceUnavailable {
		t.Errorf("request while draining: %d", r.code)
	}
	if r := get(t, ts.URL+"/healthz"); r.code != http.StatusServiceUnavailable {
		t.Errorf("healthz while draining: %d", r.code)
	}
	if r := <-done; r.code != http.StatusOK {
		t.Errorf("in-flight request: %d %s", r.code, r.body)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestShutdownCancels(t *testing.T) {
	s, ts := newServer(t, Config{})
	done := startLong(t, t.Context(), ts)
	job := post(t, ts.URL+"/v1/jobs", `{"steps":900}`)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Errorf("Shutdown = %v, want the deadline", err)
	}
	r := <-done
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("canceled request: %d %s", r.code, r.body)
	}
	if msg, _, _ := r.apiErr(t); !strings.Contains(msg, "shutting down") {
		t.Errorf("message %q", msg)
	}
	var st jobStatus
	job.json(t, &st)
	get(t, ts.URL+"/v1/jobs/"+st.ID).json(t, &st)
	if st.Status != stateFailed || !strings.Contains(st.Error, "shutting down") {
		t.Errorf("async job after shutdown: %+v", st)
	}
	if admitted(s) != 0 {
		t.Errorf("work left after Shutdown")
	}
}
