package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// Engine is what the service needs of a model; *sd.Model implements it.
type Engine interface {
	Submit(ctx context.Context, req sd.Request) (*sd.Handle, error)
	Metrics() sd.Metrics
	// Defaults are the model's own size and guidance.
	Defaults() sd.Defaults
	// LargestSize is the largest size with req's aspect ratio that fits
	// the engine's memory budget on its own (sd.Model.LargestSize).
	LargestSize(req sd.Request) (width, height int)
	// Check returns the error Submit would return at once for req.
	Check(req sd.Request) error
}

// Defaults for the zero fields of a Config.
const (
	DefaultMaxQueue        = 16
	DefaultMaxBodyBytes    = 16 << 20
	DefaultMaxSteps        = 150
	DefaultMaxImages       = 8
	DefaultFastSteps       = 25
	DefaultQualitySteps    = 50
	DefaultJobTTL          = 10 * time.Minute
	DefaultMaxJobs         = 256
	DefaultGrace           = 30 * time.Second
	DefaultLinger          = 10 * time.Second
	DefaultMaxConns        = 512
	DefaultMaxHeaderBytes  = 64 << 10
	DefaultHeaderTimeout   = 10 * time.Second
	DefaultBodyTimeout     = 2 * time.Minute
	DefaultBodyIdleTimeout = 30 * time.Second
	DefaultIdleTimeout     = 75 * time.Second
	DefaultWriteTimeout    = 2 * time.Minute
	maxPromptBytes         = 8 << 10
	maxImagesLimit         = 1 << 12 // MaxImages at most, so that counts never overflow
)

// Config configures a Server. The zero value of a field means its default
// above; the zero Config means no token and an empty replica id.
type Config struct {
	ReplicaID string // sent as the X-Replica-ID header of every response
	ModelName string // reported in infotexts and /v1/config
	// ModelSHA256 is the model's SHA-256 in hex (sd.HashModel), from which
	// infotexts and /sdapi/v1/sd-models give A1111's "Model hash"; ""
	// leaves the hash out.
	ModelSHA256 string
	// Lenient makes the A1111 endpoints ignore the request fields they
	// cannot honour, listing them as warnings, instead of refusing them
	// with 400 (see a1111_fields.go).
	Lenient bool
	// SlackSigningSecret turns on POST /slack/command, Slack's slash
	// command, verified with this secret (see slack.go); SlackBotToken,
	// when set, uploads the images with the bot instead of posting links
	// to the command's response_url; SlackAPIURL is Slack's Web API
	// (default DefaultSlackAPI).
	SlackSigningSecret, SlackBotToken, SlackAPIURL string
	// Token, when set, must come as "Authorization: Bearer <token>" on
	// every API call (not on /, /healthz, /ping and /metrics). Tokens are
	// more of them: each token is its own identity, whose work only it
	// can interrupt. Without any, a client's identity is its IP address.
	Token  string
	Tokens []string
	// MaxQueue is the most generations admitted at once, waiting or
	// running; past it requests get 429.
	MaxQueue int
	// MaxBodyBytes is one request body's limit; MaxBodyMemory the most
	// bytes of bodies being read at once, over all requests (default 4 ×
	// MaxBodyBytes). See the limits in limits.go.
	MaxBodyBytes, MaxBodyMemory int64
	// MaxSize is the largest width or height, also of init images; 0
	// means twice the model's default size (128 for the 64×64 default
	// model, 1024 for SD 1.5). The web page and /v1/config offer only the
	// sizes the engine's memory budget admits.
	MaxSize   int
	MaxSteps  int
	MaxImages int // images per request (batch_size × n_iter, n, …)
	// FastSteps and QualitySteps are the steps of the fast/quality switch
	// when a request names a quality and no steps.
	FastSteps, QualitySteps int
	// Jobs keeps the async jobs; nil means an in-memory store that keeps
	// finished jobs for JobTTL, MaxJobs of them at most.
	Jobs    JobStore
	JobTTL  time.Duration
	MaxJobs int
	// Queue, when set, is a job queue shared by replicas (see JobQueue):
	// async jobs go through it, and Serve pulls QueueConcurrency of them
	// at a time (default DefaultQueueConcurrency). Jobs must then be a
	// store the replicas share.
	Queue            JobQueue
	QueueConcurrency int
	Logger           *slog.Logger // nil discards
	// Grace is how long Serve lets the work in flight finish after its
	// context ends before it cancels that work; Linger how long it then
	// keeps answering clients that have not yet fetched the jobs that
	// ended meanwhile.
	Grace, Linger time.Duration
	// Connections (Serve only): at most MaxConns open, headers of at most
	// MaxHeaderBytes within HeaderTimeout, a body within BodyTimeout with
	// no pause longer than BodyIdleTimeout, a response written within
	// WriteTimeout, and an idle keep-alive connection closed after
	// IdleTimeout.
	MaxConns, MaxHeaderBytes                                               int
	HeaderTimeout, BodyTimeout, BodyIdleTimeout, IdleTimeout, WriteTimeout time.Duration
	// Load, when set, is how the model was opened (Folder.Load): /metrics
	// exports its open and warm-up times per component.
	Load *sd.LoadReport
	// Models, when set, is a folder of models the service loads on demand
	// and requests choose by name (see Models); the Engine given to New,
	// when not nil, is one more model, named ModelName, always loaded and
	// the default.
	Models *Models
}

func (c *Config) fill(d sd.Defaults) error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxQueue", int64(c.MaxQueue)}, {"MaxBodyBytes", c.MaxBodyBytes}, {"MaxBodyMemory", c.MaxBodyMemory},
		{"MaxSize", int64(c.MaxSize)}, {"MaxSteps", int64(c.MaxSteps)}, {"MaxImages", int64(c.MaxImages)},
		{"FastSteps", int64(c.FastSteps)}, {"QualitySteps", int64(c.QualitySteps)}, {"MaxJobs", int64(c.MaxJobs)}, {"QueueConcurrency", int64(c.QueueConcurrency)},
		{"MaxConns", int64(c.MaxConns)}, {"MaxHeaderBytes", int64(c.MaxHeaderBytes)},
		{"JobTTL", int64(c.JobTTL)}, {"Grace", int64(c.Grace)}, {"Linger", int64(c.Linger)},
		{"HeaderTimeout", int64(c.HeaderTimeout)}, {"BodyTimeout", int64(c.BodyTimeout)}, {"BodyIdleTimeout", int64(c.BodyIdleTimeout)},
		{"IdleTimeout", int64(c.IdleTimeout)}, {"WriteTimeout", int64(c.WriteTimeout)},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("server: Config.%s is negative (%d)", f.name, f.v))
		}
	}
	if c.MaxImages > maxImagesLimit {
		errs = append(errs, fmt.Errorf("server: Config.MaxImages %d is more than %d", c.MaxImages, maxImagesLimit))
	}
	for i, t := range append([]string{c.Token}, c.Tokens...) {
		if i > 0 && t == "" {
			errs = append(errs, errors.New("server: Config.Tokens holds an empty token"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.MaxQueue = cmp.Or(c.MaxQueue, DefaultMaxQueue)
	c.MaxBodyBytes = cmp.Or(c.MaxBodyBytes, DefaultMaxBodyBytes)
	c.MaxBodyMemory = cmp.Or(c.MaxBodyMemory, 4*c.MaxBodyBytes)
	if c.MaxSize == 0 {
		c.MaxSize = min(2*max(d.Width, d.Height, 64), 4096)
	}
	c.MaxSteps = cmp.Or(c.MaxSteps, DefaultMaxSteps)
	c.MaxImages = cmp.Or(c.MaxImages, DefaultMaxImages)
	c.FastSteps = cmp.Or(c.FastSteps, DefaultFastSteps)
	c.QualitySteps = cmp.Or(c.QualitySteps, DefaultQualitySteps)
	c.JobTTL = cmp.Or(c.JobTTL, DefaultJobTTL)
	c.MaxJobs = cmp.Or(c.MaxJobs, DefaultMaxJobs)
	c.QueueConcurrency = cmp.Or(c.QueueConcurrency, DefaultQueueConcurrency)
	c.Grace = cmp.Or(c.Grace, DefaultGrace)
	c.Linger = cmp.Or(c.Linger, DefaultLinger)
	c.MaxConns = cmp.Or(c.MaxConns, DefaultMaxConns)
	c.MaxHeaderBytes = cmp.Or(c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	c.HeaderTimeout = cmp.Or(c.HeaderTimeout, DefaultHeaderTimeout)
	c.BodyTimeout = cmp.Or(c.BodyTimeout, DefaultBodyTimeout)
	c.BodyIdleTimeout = cmp.Or(c.BodyIdleTimeout, DefaultBodyIdleTimeout)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
	c.WriteTimeout = cmp.Or(c.WriteTimeout, DefaultWriteTimeout)
	if c.MaxBodyMemory < c.MaxBodyBytes {
		return fmt.Errorf("server: Config.MaxBodyMemory %d is less than MaxBodyBytes %d", c.MaxBodyMemory, c.MaxBodyBytes)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Server serves an Engine over HTTP. It is safe for concurrent use. Call
// Shutdown (or let Serve's context end) to finish or cancel the work in
// flight; neither closes the Engine.
type Server struct {
	eng      Engine // the default model at New: its defaults and limits are the server's
	models   *Models
	cfg      Config
	log      *slog.Logger
	samplers []string
	mux      *http.ServeMux
	tokens   map[string]string // bearer token → identity
	// offerSize is the largest side of a square image that MaxSize and the
	// engine's memory budget both admit: what the web page offers.
	offerSize int
	jobs      JobStore
	files     fileStore // images served by URL (OpenAI's response_format url)
	slackSeen slackReplay

	slots    chan struct{} // the bounded queue: one token per admitted task
	bodies   bodyBudget
	draining atomic.Bool
	tasks    sync.WaitGroup

	mu      sync.Mutex
	waiting []*task          // admitted, not yet accepted by the engine, in order
	moved   chan struct{}    // closed and replaced when a task leaves waiting (waitTurn)
	active  map[*task]bool   // admitted and not finished
	live    map[string]*task // async jobs of this server still running
	unread  map[string]bool  // async jobs that ended while draining, not yet fetched
	conns   *connLimiter     // Serve's listener, for the metrics

	met collector
}

// New returns a Server for eng, or an error for an invalid Config. With
// Config.Models, eng may be nil: New then loads the folder's default model.
func New(eng Engine, cfg Config) (*Server, error) {
	models := cfg.Models
	switch {
	case models == nil && eng == nil:
		return nil, errors.New("server: New needs an Engine or Config.Models")
	case models == nil:
		models = fixedModels(eng, cfg.ModelName, cfg.ModelSHA256)
	case eng != nil:
		models.addFixed(eng, cfg.ModelName, cfg.ModelSHA256)
	default:
		d := models.defaultModel()
		if d == nil {
			return nil, fmt.Errorf("server: no model in %s (ONNX folders with a model_index.json, or .safetensors files)", models.cfg.Dir)
		}
		e, release, err := models.acquire(context.Background(), d)
		if err != nil {
			return nil, fmt.Errorf("server: loading the default model: %w", err)
		}
		release()
		eng = e
	}
	if err := cfg.fill(eng.Defaults()); err != nil {
		return nil, err
	}
	s := &Server{
		eng:      eng,
		models:   models,
		cfg:      cfg,
		log:      cfg.Logger,
		samplers: schedulers(),
		slots:    make(chan struct{}, cfg.MaxQueue),
		moved:    make(chan struct{}),
		active:   map[*task]bool{},
		live:     map[string]*task{},
		unread:   map[string]bool{},
		jobs:     cfg.Jobs,
	}
	s.bodies.size = cfg.MaxBodyMemory
	// the largest square the memory admits, for the web page
	w, h := eng.LargestSize(sd.Request{Width: cfg.MaxSize, Height: cfg.MaxSize})
	s.offerSize = min(cfg.MaxSize, w, h) / 8 * 8
	if s.jobs == nil {
		s.jobs = NewMemoryJobStore(cfg.JobTTL, cfg.MaxJobs)
	}
	s.tokens = map[string]string{}
	for i, t := range append([]string{cfg.Token}, cfg.Tokens...) {
		if t != "" {
			s.tokens[t] = fmt.Sprintf("token-%d", i)
		}
	}
	s.met.init()
	s.routes()
	return s, nil
}

// Handler returns the service's HTTP handler.
func (s *Server) Handler() http.Handler {
	return s.recoverer(s.instrument(http.HandlerFunc(s.route)))
}

// route serves r with its route, and answers a path or method that has
// none in the JSON error shape (the mux's own answers are plain text).
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern != "" {
		s.mux.ServeHTTP(w, r)
		return
	}
	rec := &headRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	refuseEarly(w, r)
	switch rec.code {
	case http.StatusNotFound:
		s.writeError(w, &apiError{Status: http.StatusNotFound, Type: "not_found", Msg: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", rec.header.Get("Allow"))
		s.writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error", Msg: fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))})
	default: // a redirect to the cleaned path
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.code)
	}
}

// headRecorder keeps the status and header a handler writes.
type headRecorder struct {
	header http.Header
	code   int
}

func (h *headRecorder) Header() http.Header { return h.header }
func (h *headRecorder) WriteHeader(code int) {
	if h.code == 0 {
		h.code = code
	}
}
func (h *headRecorder) Write(b []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	return len(b), nil
}

func (s *Server) routes() {
	m := http.NewServeMux()
	open := func(p string, h http.HandlerFunc) { m.HandleFunc(p, h) }
	api := func(p string, h http.HandlerFunc) { m.Handle(p, s.auth(h)) }

	open("GET /{$}", s.handleIndex)
	open("GET /healthz", s.handleHealth)
	open("GET /ping", s.handlePing)
	open("GET /metrics", s.handleMetrics)
	open("GET /favicon.ico", s.handleFavicon) // web.go

	api("POST /sdapi/v1/txt2img", s.handleA1111(false))
	api("POST /sdapi/v1/img2img", s.handleA1111(true))
	api("GET /sdapi/v1/progress", s.handleProgress)
	api("POST /sdapi/v1/interrupt", s.handleInterrupt)
	api("POST /invocations", s.handleSageMaker)
	api("POST /v1/images/generations", s.handleOpenAI)
	api("GET /v1/config", s.handleConfig)
	api("POST /v1/jobs", s.handleJobSubmit)
	api("GET /v1/jobs/{id}", s.handleJobStatus)
	api("GET /v1/jobs/{id}/result", s.handleJobResult)
	api("DELETE /v1/jobs/{id}", s.handleJobCancel)
	api("POST /v1/jobs/{id}/cancel", s.handleJobCancel)
	s.a1111Routes(api)        // a1111_info.go
	s.clientRoutes(open, api) // openai_images.go
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
	writeJSON(w, code, map[string]any{"status": status, "replica": s.cfg.ReplicaID, "model": s.models.defaultModel().name})
}

func (s *Server) handlePing(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	dw, dh := engineDefaults(s.eng) // the model's default size, when the engine tells it
	writeJSON(w, http.StatusOK, map[string]any{
		"default_width": dw, "default_height": dh,
		"model":         s.models.defaultModel().name,
		"replica":       s.cfg.ReplicaID,
		"samplers":      a1111SamplerNames(), // A1111's names; the engine's own are accepted too
		"schedulers":    []string{"Automatic", "Karras"},
		"fast_steps":    s.cfg.FastSteps,
		"quality_steps": s.cfg.QualitySteps,
		"max_size":      s.offerSize,
		"max_steps":     s.cfg.MaxSteps,
		"max_images":    s.cfg.MaxImages,
		"auth":          len(s.tokens) > 0,
	})
}
