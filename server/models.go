package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// Several checkpoints: a Models is a folder of models (diffusers ONNX
// folders, which hold a model_index.json, and single-file .safetensors
// and .ckpt checkpoints) that the service loads on demand. Requests name
// a model as AUTOMATIC1111's clients do (its title "name.safetensors
// [hash]", its name, or its hash: override_settings.sd_model_checkpoint,
// POST /sdapi/v1/options, OpenAI's model field); the others get the
// default model. Several models stay loaded while their files fit the
// memory budget; loading one that does not fit first closes the least
// recently used idle ones (never one with requests in flight: it waits for
// one to become idle). Requests for a model being loaded wait for that
// load, and a model that fails to load fails its own requests only, with
// the reason, until a refresh.

// ModelsConfig configures a Models.
type ModelsConfig struct {
	// Dir is the models folder: every ONNX model folder (one holding
	// model_index.json) and every .safetensors or .ckpt file under it is a
	// model, named by its path relative to Dir.
	Dir string
	// Open loads the model at path (sd.Open with the service's options);
	// Models closes what it opened (when the Engine is an io.Closer) on
	// eviction and in Close.
	Open func(ctx context.Context, path string) (Engine, error)
	// Budget bounds the bytes of model files loaded at once (a model's
	// weights are about its files' size); 0 means no bound, every model
	// loaded stays loaded.
	Budget int64
	// Default names the default model; "" means the first by name (or the
	// Engine given to New).
	Default string
	Logger  *slog.Logger // nil discards
}

// Models is a folder of models loaded on demand; see ModelsConfig. It is
// safe for concurrent use.
type Models struct {
	cfg ModelsConfig
	log *slog.Logger

	refreshing sync.Mutex // one Refresh at a time (it hashes without mu)

	mu      sync.Mutex
	entries []*modelEntry // sorted: the fixed engine first, then by name
	def     *modelEntry
	changed chan struct{} // closed and replaced whenever a model is released, loaded or closed
	closed  sd.Metrics    // the last counters of the engines closed
}

// modelEntry is one model of a Models.
type modelEntry struct {
	title   string // A1111's title: "name.safetensors [abcdef1234]"
	name    string // A1111's model_name: the path without extension
	file    string // the path (the file, or the folder)
	rel     string // the path relative to the folder, with extension
	sha256  string // "" when unknown
	size    int64  // the bytes of its files: its cost against the budget
	modTime time.Time
	fixed   bool // the Engine given to New: always loaded, never closed

	// under Models.mu
	eng     Engine
	loading chan struct{} // closed when a load in progress ends
	err     error         // the last load's failure, until a refresh
	busy    int           // leases held: requests in flight
	used    time.Time     // the last acquire or release
	gone    bool          // removed from the folder by a refresh
	loads   int           // successful loads, for the tests
}

// shortHash is A1111's short hash: the first 10 hex digits of the SHA-256.
func (e *modelEntry) shortHash() string {
	if len(e.sha256) >= 10 {
		return e.sha256[:10]
	}
	return ""
}

// NewModels scans cfg.Dir (the models are not loaded yet).
func NewModels(cfg ModelsConfig) (*Models, error) {
	if cfg.Open == nil {
		return nil, errors.New("server: ModelsConfig.Open is nil")
	}
	if cfg.Budget < 0 {
		return nil, fmt.Errorf("server: ModelsConfig.Budget is negative (%d)", cfg.Budget)
	}
	m := &Models{cfg: cfg, log: cfg.Logger, changed: make(chan struct{})}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if err := m.Refresh(); err != nil {
		return nil, err
	}
	return m, nil
}

// fixedModels is the Models of a single Engine (New without
// Config.Models).
func fixedModels(eng Engine, name, sha string) *Models {
	m := &Models{log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
	m.addFixed(eng, name, sha)
	return m
}

// addFixed makes eng a model that is always loaded, and the default.
func (m *Models) addFixed(eng Engine, name, sha string) {
	e := &modelEntry{name: name, rel: name, file: name, sha256: sha, fixed: true, eng: eng, used: time.Now()}
	e.title = name
	if h := e.shortHash(); h != "" {
		e.title = fmt.Sprintf("%s [%s]", name, h)
	}
	m.mu.Lock()
	m.entries = append([]*modelEntry{e}, m.entries...)
	m.def = e
	m.mu.Unlock()
}

// Refresh rescans the folder (A1111's refresh-checkpoints): new models are
// listed, removed ones closed once idle, and the load failures forgotten,
// so that a fixed file loads again. Models whose files did not change stay
// loaded.
func (m *Models) Refresh() error {
	if m.cfg.Dir == "" {
		return nil
	}
	m.refreshing.Lock()
	defer m.refreshing.Unlock()
	found, err := scanModels(m.cfg.Dir)
	if err != nil {
		return err
	}
	m.mu.Lock()
	old := map[string]*modelEntry{}
	var kept []*modelEntry
	for _, e := range m.entries {
		if e.fixed {
			kept = append(kept, e)
		} else {
			old[e.file] = e
		}
	}
	for _, f := range found {
		if e, ok := old[f.file]; ok && e.size == f.size && e.modTime.Equal(f.modTime) {
			delete(old, f.file)
			e.err = nil
			kept = append(kept, e)
			continue
		}
		m.mu.Unlock()
		f.sha256, err = sd.HashModel(f.file)
		m.mu.Lock()
		if err != nil {
			m.log.Warn("server: hashing a model", "model", f.rel, "err", err)
		}
		f.title = f.rel
		if h := f.shortHash(); h != "" {
			f.title = fmt.Sprintf("%s [%s]", f.rel, h)
		}
		kept = append(kept, f)
	}
	for _, e := range old { // removed or changed: closed once idle
		e.gone = true
		if e.busy == 0 {
			m.unload(e)
		}
	}
	m.entries = kept
	switch {
	case m.def != nil && !m.def.gone:
	case m.def != nil && m.sameFile(m.def) != nil: // the default's file changed: its new version
		m.def = m.sameFile(m.def)
	case m.cfg.Default != "":
		d, err := m.findLocked(m.cfg.Default)
		if err != nil {
			m.mu.Unlock()
			return fmt.Errorf("server: the default model: %w", err)
		}
		m.def = d
	default:
		m.def = nil
		if len(kept) > 0 {
			m.def = kept[0]
		}
	}
	m.broadcast()
	m.mu.Unlock()
	return nil
}

// sameFile returns the listed model at e's path, or nil. Called with m.mu
// held.
func (m *Models) sameFile(e *modelEntry) *modelEntry {
	for _, o := range m.entries {
		if o.file == e.file && !o.gone {
			return o
		}
	}
	return nil
}

// errUnknownModel refuses a model name the server has not got.
func (m *Models) errUnknownModel(param, name string) *apiError {
	var titles []string
	for _, e := range m.entries {
		titles = append(titles, fmt.Sprintf("%q", e.title))
	}
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param,
		Msg: fmt.Sprintf("%s: no model %q on this server (it serves %s; GET /sdapi/v1/sd-models)", param, name, strings.Join(titles, ", "))}
}

// find returns the model a name names, as A1111's checkpoint lookup
// does: its title, its file name with or without extension, its name, its
// short hash or its SHA-256 (and a title whose hash is left out or stale).
func (m *Models) find(param, name string) (*modelEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.findLocked(name)
	if err != nil {
		return nil, m.errUnknownModel(param, name)
	}
	return e, nil
}

func (m *Models) findLocked(name string) (*modelEntry, error) {
	n := strings.TrimSpace(name)
	for _, match := range []func(e *modelEntry) bool{
		func(e *modelEntry) bool { return e.title == n || e.rel == n },
		func(e *modelEntry) bool { return e.name == n },
		func(e *modelEntry) bool {
			return e.shortHash() != "" && (strings.EqualFold(n, e.shortHash()) || strings.EqualFold(n, e.sha256))
		},
		func(e *modelEntry) bool { // "name [stale hash]", or an extension of another kind
			base, _, _ := strings.Cut(n, " [")
			for _, ext := range []string{".safetensors", ".ckpt", ".onnx"} {
				base = strings.TrimSuffix(base, ext)
			}
			return base == e.name || base == filepath.Base(e.name)
		},
	} {
		for _, e := range m.entries {
			if !e.gone && match(e) {
				return e, nil
			}
		}
	}
	return nil, fmt.Errorf("no model %q", name)
}

// defaultModel returns the default model (nil only for an empty folder).
func (m *Models) defaultModel() *modelEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.def
}

// list returns the models, the fixed engine first, then by name.
func (m *Models) list() []*modelEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.entries)
}

// setDefault makes e the default model, loading it first (as A1111's
// POST /sdapi/v1/options does): a model that fails to load is not made
// the default.
func (m *Models) setDefault(ctx context.Context, e *modelEntry) error {
	_, release, err := m.acquire(ctx, e)
	if err != nil {
		return err
	}
	release()
	m.mu.Lock()
	m.def = e
	m.mu.Unlock()
	return nil
}

// broadcast wakes the waiters for a change. Called with m.mu held.
func (m *Models) broadcast() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// loadedBytes is what the models loaded and being loaded take of the
// budget. Called with m.mu held.
func (m *Models) loadedBytes() int64 {
	var n int64
	for _, e := range m.entries {
		if e.eng != nil || e.loading != nil {
			n += e.size
		}
	}
	return n
}

// unload closes e's engine. Called with m.mu held, for an idle model.
func (m *Models) unload(e *modelEntry) {
	if e.fixed || e.eng == nil {
		return
	}
	eng := e.eng
	e.eng = nil
	addMetrics(&m.closed, eng.Metrics())
	if c, ok := eng.(io.Closer); ok {
		if err := c.Close(); err != nil {
			m.log.Warn("server: closing a model", "model", e.title, "err", err)
		}
	}
	m.log.Info("model unloaded", "model", e.title)
}

// acquire returns e's engine, loading it first when it is not loaded, and
// a release to call when the request is done with it; while it is held,
// the model is not evicted.
func (m *Models) acquire(ctx context.Context, e *modelEntry) (Engine, func(), error) {
	m.mu.Lock()
	for {
		switch {
		case e.eng != nil:
			e.busy++
			e.used = time.Now()
			eng := e.eng
			m.mu.Unlock()
			var once sync.Once
			return eng, func() { once.Do(func() { m.release(e) }) }, nil
		case e.gone:
			m.mu.Unlock()
			return nil, nil, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Param: "model",
				Msg: fmt.Sprintf("model %q was removed from the models folder", e.title)}
		case e.err != nil:
			err := e.err
			m.mu.Unlock()
			return nil, nil, err
		case e.loading != nil: // another request loads it: wait for that load
			if err := m.wait(ctx, e.loading); err != nil {
				return nil, nil, err
			}
			continue
		}
		if b := m.cfg.Budget; b > 0 && e.size > b {
			e.err = &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: "model",
				Msg: fmt.Sprintf("model %q: its files (%s) are larger than the models' memory budget (%s)", e.title, gib(e.size), gib(b))}
			continue
		}
		if !m.makeRoom(e) { // every loaded model is busy: wait for one to be idle
			if err := m.wait(ctx, m.changed); err != nil {
				return nil, nil, err
			}
			continue
		}
		e.loading = make(chan struct{})
		m.mu.Unlock()
		start := time.Now()
		// the load is shared by every request that waits for it: one
		// client leaving does not cancel it
		eng, err := m.cfg.Open(context.WithoutCancel(ctx), e.file)
		m.mu.Lock()
		close(e.loading)
		e.loading = nil
		if err != nil {
			m.log.Error("server: loading a model", "model", e.title, "err", err)
			msg := strings.ReplaceAll(err.Error(), m.cfg.Dir+string(filepath.Separator), "")
			e.err = &apiError{Status: http.StatusInternalServerError, Type: "server_error", Param: "model",
				Msg: fmt.Sprintf("model %q could not be loaded: %s (the other models still serve; fix the file and POST /sdapi/v1/refresh-checkpoints)", e.title, msg)}
		} else {
			e.eng, e.loads = eng, e.loads+1
			m.log.Info("model loaded", "model", e.title, "seconds", time.Since(start).Seconds())
		}
		m.broadcast()
	}
}

// wait waits, with m.mu released, until ch is closed or ctx is done. It
// is called with m.mu held and returns with it held, except when it
// returns ctx's error.
func (m *Models) wait(ctx context.Context, ch <-chan struct{}) error {
	m.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	m.mu.Lock()
	return nil
}

// makeRoom evicts the least recently used idle models until e fits the
// budget beside the others, and reports whether it does. Called with
// m.mu held.
func (m *Models) makeRoom(e *modelEntry) bool {
	b := m.cfg.Budget
	for b > 0 && m.loadedBytes()+e.size > b {
		var victim *modelEntry
		for _, o := range m.entries {
			if o.eng != nil && !o.fixed && o.busy == 0 && (victim == nil || o.used.Before(victim.used)) {
				victim = o
			}
		}
		if victim == nil {
			return false
		}
		m.log.Info("model evicted", "model", victim.title, "for", e.title)
		m.unload(victim)
	}
	return true
}

func (m *Models) release(e *modelEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.busy--
	e.used = time.Now()
	if e.gone && e.busy == 0 {
		m.unload(e)
	}
	m.broadcast()
}

// loaded returns e's engine when it is loaded, else nil.
func (m *Models) loaded(e *modelEntry) Engine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return e.eng
}

// Close closes the models it loaded (not the Engine given to New). Call it
// after the Server's Shutdown.
func (m *Models) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, e := range m.entries {
		if e.eng != nil && !e.fixed {
			if c, ok := e.eng.(io.Closer); ok {
				errs = append(errs, c.Close())
			}
			e.eng = nil
		}
	}
	return errors.Join(errs...)
}

func gib(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// dir is the models folder, or nil without one (as A1111's ckpt_dir).
func (m *Models) dir() any {
	if m.cfg.Dir == "" {
		return nil
	}
	return m.cfg.Dir
}

// defaultEngine returns the default model's engine when it is loaded,
// else the engine the server started with.
func (s *Server) defaultEngine() Engine {
	if e := s.models.loaded(s.models.defaultModel()); e != nil {
		return e
	}
	return s.eng
}

// unnamed reports whether the server has one model with no name (a
// Config without ModelName or Models): any model name means it.
func (m *Models) unnamed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries) == 1 && m.entries[0].fixed && m.entries[0].name == ""
}

// unloadIdle closes every idle model it loaded.
func (m *Models) unloadIdle() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.entries {
		if e.busy == 0 {
			m.unload(e)
		}
	}
	m.broadcast()
}
