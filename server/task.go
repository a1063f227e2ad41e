package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"math"
	"net/http"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

var (
	errShutdown    = errors.New("server: shutting down")
	errInterrupted = errors.New("server: interrupted")
	errCanceled    = errors.New("server: canceled by the client")
)

// Task states.
const (
	stateQueued   = "queued"
	stateRunning  = "running"
	stateDone     = "done"
	stateFailed   = "failed"
	stateCanceled = "canceled"
)

// task is one admitted generation: one or more engine requests.
type task struct {
	id      string
	owner   string // the identity that sent it
	api     string
	mode    string
	created time.Time
	spec    *spec
	cancel  context.CancelCauseFunc

	mu       sync.Mutex
	state    string
	started  time.Time
	finished time.Time
	step     []int // per engine request
	total    []int
	results  []*sd.Result
	err      error
	// previews are the latest progress preview of each engine request;
	// partial marks the results of an interrupted task that are such a
	// preview (A1111 returns what an interrupted request has).
	previews    []image.Image
	resolved    []sd.Request // each engine request as resolved at Submit
	partial     []bool
	interrupted bool // by /sdapi/v1/interrupt
	// onStep, when set before execute, sees each progress event of
	// engine request req (OpenAI streams take their partial images there).
	onStep func(req int, ev sd.Progress)
	done   chan struct{}
	stored chan struct{} // async jobs: closed once the record of its end is stored

	cancelRequested bool         // by the async API
	handles         []*sd.Handle // its engine requests, as they are submitted

	model *modelEntry // the model it runs on
	eng   Engine      // that model's engine, once loaded
}

// interrupt ends t as AUTOMATIC1111's interrupt does: its engine requests
// stop denoising and return their partial images (a 200 for the client);
// those not yet submitted are not. A task with none submitted yet ends
// with errInterrupted.
func (t *task) interrupt() {
	t.mu.Lock()
	t.interrupted = true
	hs := slices.Clone(t.handles)
	t.mu.Unlock()
	if len(hs) == 0 {
		t.cancel(errInterrupted)
		return
	}
	for _, h := range hs {
		h.Interrupt()
	}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// admit takes a queue slot for sp, or fails with 429 or 503. The task's
// context derives from parent; the caller must run execute with it.
func (s *Server) admit(parent context.Context, owner, api string, sp *spec) (*task, context.Context, error) {
	select {
	case s.slots <- struct{}{}:
	default:
		s.met.rejectedFull()
		return nil, nil, &apiError{Status: http.StatusTooManyRequests, Type: "rate_limit", Msg: fmt.Sprintf("queue full (%d requests admitted); retry later", s.cfg.MaxQueue), RetryAfter: s.retryAfter()}
	}
	t := &task{
		id: cmp.Or(sp.id, newID()), owner: owner, api: api, mode: sp.mode, created: time.Now(), spec: sp,
		state: stateQueued, done: make(chan struct{}), stored: make(chan struct{}),
		step: make([]int, len(sp.reqs)), total: make([]int, len(sp.reqs)),
		previews: make([]image.Image, len(sp.reqs)), resolved: make([]sd.Request, len(sp.reqs)),
	}
	for i, r := range sp.reqs {
		t.total[i] = r.Steps
	}
	ctx, cancel := context.WithCancelCause(parent)
	t.cancel = cancel
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() { // checked under s.mu, so no Add races Shutdown's Wait
		<-s.slots
		cancel(nil)
		return nil, nil, &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "server is shutting down", RetryAfter: 1}
	}
	s.waiting = append(s.waiting, t)
	s.active[t] = true
	s.tasks.Add(1)
	return t, ctx, nil
}

// retryAfter estimates when a slot frees up, in whole seconds.
func (s *Server) retryAfter() int {
	lat := s.met.meanLatency()
	return max(1, int(math.Ceil(lat.Seconds())))
}

func (s *Server) leaveQueue(t *task) {
	s.mu.Lock()
	if i := slices.Index(s.waiting, t); i >= 0 {
		s.waiting = slices.Delete(s.waiting, i, i+1)
		close(s.moved)
		s.moved = make(chan struct{})
	}
	s.mu.Unlock()
}

// waitTurn returns once no task admitted before t for the same model is
// still waiting to submit, so that tasks enter the engine in the order they
// were admitted (the order queue_position reports) however their
// goroutines are scheduled; or with ctx's cause. Tasks of other models do
// not hold t back.
func (s *Server) waitTurn(ctx context.Context, t *task, model *modelEntry) error {
	def := s.models.defaultModel()
	for {
		s.mu.Lock()
		ahead := false
		if i := slices.Index(s.waiting, t); i > 0 {
			ahead = slices.ContainsFunc(s.waiting[:i], func(u *task) bool { return cmp.Or(u.spec.model, def) == model })
		}
		moved := s.moved
		s.mu.Unlock()
		if !ahead {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// queuePosition returns t's 1-based place among the waiting tasks, or 0.
func (s *Server) queuePosition(t *task) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Index(s.waiting, t) + 1
}

// execute runs an admitted task to the end under ctx, which the caller
// derived with t.cancel; it releases the task's slot.
//
// A panic in it (the engine's, or the service's) fails the task with a 500
// instead of ending the process: async jobs run it on their own goroutine,
// outside any handler's recover.
func (s *Server) execute(ctx context.Context, t *task) {
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("server: panic in a generation", "task", t.id, "panic", v, "stack", string(debug.Stack()))
			t.mu.Lock()
			t.finished = time.Now()
			t.state, t.err = stateFailed, &apiError{Status: http.StatusInternalServerError, Msg: "internal error", cause: fmt.Errorf("panic: %v", v)}
			t.mu.Unlock()
			s.met.finished(t, time.Since(start), t.err)
		}
		s.leaveQueue(t)
		s.mu.Lock()
		delete(s.active, t)
		s.mu.Unlock()
		<-s.slots
		t.cancel(nil) // frees the context
		s.tasks.Done()
		close(t.done)
	}()
	handles := make([]*sd.Handle, 0, len(t.spec.reqs))
	model := cmp.Or(t.spec.model, s.models.defaultModel())
	eng, release, err := s.models.acquire(ctx, model) // loads the model when it is not loaded
	if err != nil {
		t.mu.Lock()
		t.finished = time.Now()
		t.state, t.err = stateFailed, err
		if ctx.Err() != nil {
			t.state, t.err = stateCanceled, errCanceled
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				t.err = cause
			}
			if errors.Is(t.err, errShutdown) {
				t.state = stateFailed // the client did not ask for it
			}
		}
		t.mu.Unlock()
		s.met.finished(t, time.Since(start), t.err)
		return
	}
	defer release() // after the requests end: a model in use is never evicted
	t.mu.Lock()
	t.model, t.eng = model, eng
	t.mu.Unlock()
	err = s.waitTurn(ctx, t, model)
	for _, r := range t.spec.reqs {
		if err != nil {
			break
		}
		var h *sd.Handle
		h, err = eng.Submit(ctx, r)
		if err != nil {
			break
		}
		if len(handles) == 0 {
			s.leaveQueue(t)
			t.mu.Lock()
			t.state, t.started = stateRunning, time.Now()
			t.mu.Unlock()
		}
		t.mu.Lock()
		t.resolved[len(handles)] = h.Request()
		t.mu.Unlock()
		handles = append(handles, h)
		t.mu.Lock()
		t.handles = append(t.handles, h)
		stop := t.interrupted
		t.mu.Unlock()
		if stop { // interrupted while it was being submitted
			h.Interrupt()
			break
		}
	}
	if err != nil {
		t.cancel(err) // cancels the requests already submitted
	}
	var wg sync.WaitGroup
	for i, h := range handles {
		wg.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					s.log.Error("server: panic following progress", "task", t.id, "panic", v, "stack", string(debug.Stack()))
					t.cancel(&apiError{Status: http.StatusInternalServerError, Msg: "internal error", cause: fmt.Errorf("panic: %v", v)})
					for range h.Progress() { // let the request end
					}
				}
			}()
			for ev := range h.Progress() {
				t.mu.Lock()
				t.step[i], t.total[i] = ev.Step, ev.Total
				if ev.Preview != nil {
					t.previews[i] = ev.Preview
				}
				t.mu.Unlock()
				if t.onStep != nil {
					t.onStep(i, ev)
				}
			}
		})
	}
	wg.Wait() // progress channels close when the requests finish
	results := make([]*sd.Result, len(handles))
	for i, h := range handles {
		res, werr := h.Wait(context.WithoutCancel(ctx))
		if werr != nil && err == nil {
			err = werr
		}
		results[i] = res
	}
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause // shutdown, interrupt, or the first submit's error
		} else {
			err = errCanceled
		}
	}
	t.mu.Lock()
	t.finished = time.Now()
	switch {
	case err == nil:
		t.state, t.results = stateDone, results
		for i := range t.step {
			t.step[i] = t.total[i]
		}
	case errors.Is(err, errShutdown):
		t.state, t.err = stateFailed, err // the client did not ask for it
	case errors.Is(err, errInterrupted):
		t.state, t.err = stateCanceled, err
		t.partialResults(results)
	case errors.Is(err, errCanceled):
		t.state, t.err = stateCanceled, err
	default:
		t.state, t.err = stateFailed, err
	}
	t.mu.Unlock()
	s.met.finished(t, time.Since(start), err)
}

// progress returns the steps done and in all over t's requests.
func (t *task) progress() (step, total int, state string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.step {
		step += t.step[i]
		total += t.total[i]
	}
	return step, total, t.state
}

// runSync admits sp and runs it under the request's context.
func (s *Server) runSync(r *http.Request, api string, sp *spec) (*task, error) {
	t, ctx, err := s.admit(r.Context(), identity(r), api, sp)
	if err != nil {
		return nil, err
	}
	s.execute(ctx, t)
	return t, t.err
}

// partialResults keeps what an interrupted task has, as A1111 does: the
// requests that finished, and the latest preview of the others (scaled to
// the image size), marked partial. Called with t.mu held.
func (t *task) partialResults(results []*sd.Result) {
	t.results, t.partial = nil, nil
	for i, res := range results {
		if res != nil {
			t.results, t.partial = append(t.results, res), append(t.partial, false)
			continue
		}
		r, p := t.resolved[i], t.previews[i]
		if p == nil || r.Width == 0 {
			continue // interrupted before its first step: nothing to show
		}
		// the preview is of the request's first image
		t.results = append(t.results, &sd.Result{Images: []image.Image{scaled(p, r.Width, r.Height)}, Seeds: []int64{r.Seed}, Request: r})
		t.partial = append(t.partial, true)
	}
	t.interrupted = len(t.results) > 0
}
