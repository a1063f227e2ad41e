package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/sd"
)

// Engine is what the service needs of a model; *sd.Model implements it.
type Engine interface {
	Submit(ctx context.Context, req sd.Request) (*sd.Handle, error)
	Metrics() sd.Metrics
}

// Defaults for the zero fields of a Config.
const (
	DefaultMaxQueue     = 16
	DefaultMaxBodyBytes = 16 << 20
	DefaultMaxSize      = 1024
	DefaultMaxSteps     = 150
	DefaultMaxImages    = 8
	DefaultFastSteps    = 25
	DefaultQualitySteps = 50
	DefaultJobTTL       = 10 * time.Minute
	DefaultMaxJobs      = 256
	maxPromptBytes      = 8 << 10
)

// Config configures a Server. The zero value means the defaults above, no
// token and an empty replica id.
type Config struct {
	ReplicaID string // sent as the X-Replica-ID header of every response
	ModelName string // reported in infotexts and /v1/config
	// Token, when set, must come as "Authorization: Bearer <token>" on
	// every API call (not on /, /healthz, /ping and /metrics).
	Token string
	// MaxQueue is the most generations admitted at once, waiting or
	// running; past it requests get 429.
	MaxQueue     int
	MaxBodyBytes int64 // request body limit
	MaxSize      int   // largest width or height, also of init images
	MaxSteps     int
	MaxImages    int // images per request (batch_size × n_iter, n, …)
	// FastSteps and QualitySteps are the steps of the fast/quality switch
	// when a request names a quality and no steps.
	FastSteps, QualitySteps int
	JobTTL                  time.Duration // how long finished async jobs are kept
	MaxJobs                 int           // finished async jobs kept at most
	Logger                  *slog.Logger  // nil discards
	// Load, when set, is how the model was opened (Folder.Load): /metrics
	// exports its open and warm-up times per component.
	Load *sd.LoadReport
}

func (c *Config) fill() {
	c.MaxQueue = cmp.Or(c.MaxQueue, DefaultMaxQueue)
	c.MaxBodyBytes = cmp.Or(c.MaxBodyBytes, DefaultMaxBodyBytes)
	c.MaxSize = cmp.Or(c.MaxSize, DefaultMaxSize)
	c.MaxSteps = cmp.Or(c.MaxSteps, DefaultMaxSteps)
	c.MaxImages = cmp.Or(c.MaxImages, DefaultMaxImages)
	c.FastSteps = cmp.Or(c.FastSteps, DefaultFastSteps)
	c.QualitySteps = cmp.Or(c.QualitySteps, DefaultQualitySteps)
	c.JobTTL = cmp.Or(c.JobTTL, DefaultJobTTL)
	c.MaxJobs = cmp.Or(c.MaxJobs, DefaultMaxJobs)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server serves an Engine over HTTP. It is safe for concurrent use. Call
// Shutdown to finish or cancel the work in flight; it does not close the
// Engine.
type Server struct {
	eng      Engine
	cfg      Config
	log      *slog.Logger
	samplers []string
	mux      *http.ServeMux

	slots    chan struct{} // the bounded queue: one token per admitted task
	draining atomic.Bool
	tasks    sync.WaitGroup

	mu      sync.Mutex
	waiting []*task          // admitted, not yet accepted by the engine, in order
	active  map[*task]bool   // admitted and not finished
	jobs    map[string]*task // async jobs, finished ones until they expire

	met collector
}

// NewServer returns a Server for eng.
func NewServer(eng Engine, cfg Config) *Server {
	cfg.fill()
	s := &Server{
		eng:      eng,
		cfg:      cfg,
		log:      cfg.Logger,
		samplers: scheduler.Names(),
		slots:    make(chan struct{}, cfg.MaxQueue),
		active:   map[*task]bool{},
		jobs:     map[string]*task{},
	}
	s.met.init()
	s.routes()
	return s
}

// Handler returns the service's HTTP handler.
func (s *Server) Handler() http.Handler {
	return s.recoverer(s.instrument(s.mux))
}

func (s *Server) routes() {
	m := http.NewServeMux()
	open := func(p string, h http.HandlerFunc) { m.HandleFunc(p, h) }
	api := func(p string, h http.HandlerFunc) { m.Handle(p, s.auth(h)) }

	open("GET /{$}", s.handleIndex)
	open("GET /healthz", s.handleHealth)
	open("GET /ping", s.handlePing)
	open("GET /metrics", s.handleMetrics)

	api("POST /sdapi/v1/txt2img", s.handleA1111(false))
	api("POST /sdapi/v1/img2img", s.handleA1111(true))
	api("GET /sdapi/v1/progress", s.handleProgress)
	api("POST /sdapi/v1/interrupt", s.handleInterrupt)
	api("GET /sdapi/v1/samplers", s.handleSamplers)
	api("POST /invocations", s.handleSageMaker)
	api("POST /v1/images/generations", s.handleOpenAI)
	api("GET /v1/config", s.handleConfig)
	api("POST /v1/jobs", s.handleJobSubmit)
	api("GET /v1/jobs/{id}", s.handleJobStatus)
	api("GET /v1/jobs/{id}/result", s.handleJobResult)
	api("DELETE /v1/jobs/{id}", s.handleJobCancel)
	api("POST /v1/jobs/{id}/cancel", s.handleJobCancel)
	s.mux = m
}

// Shutdown stops admitting work (new requests get 503) and waits for the
// admitted work, sync and async, to finish; when ctx ends first it cancels
// that work, waits for it to stop, and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.tasks.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for t := range s.active {
			t.cancel(errShutdown)
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// Draining reports whether Shutdown has been called.
func (s *Server) Draining() bool { return s.draining.Load() }

// ---- middleware

type statusWriter struct {
	http.ResponseWriter
	code    int
	written bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.written {
		w.code, w.written = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.code, w.written = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument counts requests by route and status and sets X-Replica-ID.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.ReplicaID != "" {
			w.Header().Set("X-Replica-ID", s.cfg.ReplicaID)
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		s.met.request(cmp.Or(r.Pattern, "other"), sw.code)
	})
}

// recoverer turns a panic in a handler into a 500, so that no panic
// reaches a client's connection and the other requests go on.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("server: panic", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeError(w, &apiError{Status: http.StatusInternalServerError, Msg: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// auth checks the bearer token when one is configured.
func (s *Server) auth(next http.Handler) http.Handler {
	if s.cfg.Token == "" {
		return next
	}
	want := []byte("Bearer " + s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sdpipe"`)
			writeError(w, &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ---- tasks: admitted generations

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
	done     chan struct{}

	cancelRequested bool // by the async API
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// admit takes a queue slot for sp, or fails with 429 or 503. The task's
// context derives from parent; the caller must run execute with it.
func (s *Server) admit(parent context.Context, api string, sp *spec) (*task, context.Context, error) {
	select {
	case s.slots <- struct{}{}:
	default:
		s.met.rejectedFull()
		return nil, nil, &apiError{Status: http.StatusTooManyRequests, Type: "rate_limit", Msg: fmt.Sprintf("queue full (%d requests admitted); retry later", s.cfg.MaxQueue), RetryAfter: s.retryAfter()}
	}
	t := &task{
		id: newID(), api: api, mode: sp.mode, created: time.Now(), spec: sp,
		state: stateQueued, done: make(chan struct{}),
		step: make([]int, len(sp.reqs)), total: make([]int, len(sp.reqs)),
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
	}
	s.mu.Unlock()
}

// queuePosition returns t's 1-based place among the waiting tasks, or 0.
func (s *Server) queuePosition(t *task) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Index(s.waiting, t) + 1
}

// execute runs an admitted task to the end under ctx, which the caller
// derived with t.cancel; it releases the task's slot.
func (s *Server) execute(ctx context.Context, t *task) {
	start := time.Now()
	defer func() {
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
	var err error
	for _, r := range t.spec.reqs {
		var h *sd.Handle
		h, err = s.eng.Submit(ctx, r)
		if err != nil {
			break
		}
		if len(handles) == 0 {
			s.leaveQueue(t)
			t.mu.Lock()
			t.state, t.started = stateRunning, time.Now()
			t.mu.Unlock()
		}
		handles = append(handles, h)
	}
	if err != nil {
		t.cancel(err) // cancels the requests already submitted
	}
	var wg sync.WaitGroup
	for i, h := range handles {
		wg.Go(func() {
			for ev := range h.Progress() {
				t.mu.Lock()
				t.step[i], t.total[i] = ev.Step, ev.Total
				t.mu.Unlock()
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
	case errors.Is(err, errCanceled) || errors.Is(err, errInterrupted) || errors.Is(err, errShutdown):
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
	t, ctx, err := s.admit(r.Context(), api, sp)
	if err != nil {
		return nil, err
	}
	s.execute(ctx, t)
	return t, t.err
}

// ---- small handlers

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	code, status := http.StatusOK, "ok"
	if s.draining.Load() {
		code, status = http.StatusServiceUnavailable, "draining"
	}
	writeJSON(w, code, map[string]any{"status": status, "replica": s.cfg.ReplicaID, "model": s.cfg.ModelName})
}

func (s *Server) handlePing(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleSamplers(w http.ResponseWriter, r *http.Request) {
	type sampler struct {
		Name    string            `json:"name"`
		Aliases []string          `json:"aliases"`
		Options map[string]string `json:"options"`
	}
	out := make([]sampler, 0, len(s.samplers))
	for _, n := range s.samplers {
		out = append(out, sampler{Name: n, Aliases: []string{}, Options: map[string]string{}})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"model":         s.cfg.ModelName,
		"replica":       s.cfg.ReplicaID,
		"samplers":      s.samplers,
		"fast_steps":    s.cfg.FastSteps,
		"quality_steps": s.cfg.QualitySteps,
		"max_size":      s.cfg.MaxSize,
		"max_steps":     s.cfg.MaxSteps,
		"max_images":    s.cfg.MaxImages,
		"auth":          s.cfg.Token != "",
	})
}

func (s *Server) handleProgress(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	var cur *task
	count := 0
	for t := range s.active {
		if t.api != apiA1111 {
			continue
		}
		count++
		t.mu.Lock()
		if t.state == stateRunning && (cur == nil || t.started.Before(cur.started)) {
			cur = t
		}
		t.mu.Unlock()
	}
	s.mu.Unlock()
	type state struct {
		Skipped       bool   `json:"skipped"`
		Interrupted   bool   `json:"interrupted"`
		Job           string `json:"job"`
		JobCount      int    `json:"job_count"`
		JobTimestamp  string `json:"job_timestamp"`
		JobNo         int    `json:"job_no"`
		SamplingStep  int    `json:"sampling_step"`
		SamplingSteps int    `json:"sampling_steps"`
	}
	out := struct {
		Progress     float64 `json:"progress"`
		ETARelative  float64 `json:"eta_relative"`
		State        state   `json:"state"`
		CurrentImage *string `json:"current_image"`
		TextInfo     *string `json:"textinfo"`
	}{State: state{JobCount: count}}
	if cur != nil {
		step, total, _ := cur.progress()
		cur.mu.Lock()
		started := cur.started
		cur.mu.Unlock()
		out.State.Job = cur.id
		out.State.JobTimestamp = started.UTC().Format("20060102150405")
		out.State.SamplingStep, out.State.SamplingSteps = step, total
		if total > 0 {
			out.Progress = float64(step) / float64(total)
		}
		if out.Progress > 0 {
			el := time.Since(started).Seconds()
			out.ETARelative = el/out.Progress - el
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) {
	n := 0
	s.mu.Lock()
	for t := range s.active {
		if t.api == apiA1111 {
			t.cancel(errInterrupted)
			n++
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"interrupted": n})
}

// parseSize parses "WxH".
func parseSize(v string) (w, h int, ok bool) {
	a, b, found := strings.Cut(strings.ToLower(v), "x")
	if !found {
		return 0, 0, false
	}
	w, err1 := strconv.Atoi(a)
	h, err2 := strconv.Atoi(b)
	return w, h, err1 == nil && err2 == nil
}
