package server

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
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
	DefaultGrace        = 30 * time.Second
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
	// Grace is how long Serve lets the work in flight finish after its
	// context ends before it cancels that work.
	Grace time.Duration
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
	c.Grace = cmp.Or(c.Grace, DefaultGrace)
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

// New returns a Server for eng.
func New(eng Engine, cfg Config) *Server {
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
