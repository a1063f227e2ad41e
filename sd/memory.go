package sd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// Memory admission: before the engine takes a request, the Model estimates
// the peak memory the request will need (per component, from the
// components' signatures, the image size, the batch and the prompt's
// length) and admits it only while the estimates of the requests in
// flight fit the memory budget (WithMemoryBudget; by default 80% of what
// the machine, or the process's cgroup, had available once the models were
// loaded). A request that can never fit is refused with a *MemoryError
// naming the budget and the largest size that fits; one that fits but not
// beside the requests in flight waits in Submit, first come first served,
// like any request the engine is not ready for. A request whose plain VAE
// decode does not fit but whose tiled one does is admitted with the VAE
// tiled (tiling.go, WithTiledVAE).
//
// What is held at once. A component's call needs memory for its
// intermediate tensors; whether that memory outlives the call decides how
// the parts of an estimate add up:
//
//   - held: a session with ONNX Runtime's memory arena on (by default the
//     UNet, and the text encoders while they stay loaded) keeps its peak
//     for the Model's life, so its need counts for the whole request, as do
//     the request's buffers;
//   - freed: a session without the arena (by default the VAE decoder and
//     encoder, see SessionOptions.MemoryArena) gives its memory back when
//     its call ends, and so do offloaded text encoders (WithOffload), which
//     are closed once no encoding is in flight, with their weights
//     (MemoryEstimate.TextWeights) and their arenas.
//
// A request's stages run one after the other (encode the prompts, encode
// the init image, denoise, decode), so its freed parts never overlap: one
// request holds held + max(text encoding + weights, the largest other
// freed part) (MemoryEstimate.Total). Requests in flight overlap in any
// way (one encodes while another denoises or decodes), but the offloaded
// encoders are loaded once however many requests encode at the same time.
// The gate (memoryGate) therefore admits, for the set S in flight,
//
//	Σ(held + other) + max(0, W + Σ encode − min other)
//
// where other is each request's largest freed part outside the text
// encoding, encode its text encoders' arena (counted for every request,
// since overlapping encodings share the sessions and their arena keeps the
// peak until the last closes them) and W the encoders' weights: the most
// that any mix of stages holds, when at least one request encodes and the
// others are at their largest. For one request it is Total; without
// offload (W = 0, the encoders held) it is the sum of the Totals, as
// before. Two things it does not count: a held arena keeps the peak of an
// earlier, larger request after that request has left the gate, and the
// first request's text encoding runs before the UNet's arena has grown
// (counted anyway, since every later request meets it).

// ErrMemory is matched (errors.Is) by a *MemoryError.
var ErrMemory = errors.New("sd: request does not fit the memory budget")

// MaxPromptWeight bounds the attention weight of any part of a prompt,
// nesting included: (((word))) is 1.331; 4,000 nested parentheses, whose
// weight overflows to infinity, are refused instead of giving a
// non-finite image.
const MaxPromptWeight = 10

// MemoryEstimate is the memory a request is estimated to need, in bytes:
// what each component's calls hold at their peak (ONNX Runtime keeps each
// session's peak in its memory arena, where the arena is on), and the
// request's own buffers.
type MemoryEstimate struct {
	TextEncoder, UNet, VAEDecoder, VAEEncoder int64
	Buffers                                   int64 // latents, embeddings, decoded images
	// TextWeights are the bytes of the text encoders' weights that the
	// request loads while its prompts are encoded, with WithOffload's
	// text encoders (0 without): they are freed before the UNet runs, and
	// requests that encode at the same time share one load.
	TextWeights int64
	// VAETile is the tile, in pixels, that the VAE decodes (and encodes)
	// the request in, and whose memory VAEDecoder and VAEEncoder count; 0
	// when it runs untiled (see WithTiledVAE).
	VAETile int

	freed componentSet // the components whose memory is given back when their call ends
}

// Total is the most the request holds at once, on its own: what it is
// admitted against. The parts held for the request's life (the buffers,
// and the components whose sessions keep their arenas) add up; of the
// parts freed when their stage ends, only the largest counts, with the
// offloaded text encoders' weights counted with their own stage: the
// stages of one request do not overlap (see the top of this file). When
// every part is held (the zero value of the unexported set of freed
// parts) it is their sum.
func (e MemoryEstimate) Total() int64 {
	d := e.demand()
	return d.held + max(d.encode+d.weights, d.other)
}

// demand splits e into what the gate counts (memoryGate): the parts held
// for the request's life, its text encoding's freed part without the
// weights, the largest of its other freed parts, and the offloaded
// encoders' weights.
func (e MemoryEstimate) demand() memDemand {
	d := memDemand{held: e.Buffers}
	for _, p := range []struct {
		c Component
		n int64
	}{{TextEncoder, e.TextEncoder}, {UNet, e.UNet}, {VAEDecoder, e.VAEDecoder}, {VAEEncoder, e.VAEEncoder}} {
		switch {
		case !e.freed.has(p.c):
			d.held += p.n
		case p.c == TextEncoder:
			d.encode = p.n
		default:
			d.other = max(d.other, p.n)
		}
	}
	if e.freed.has(TextEncoder) {
		d.weights = e.TextWeights
	} else {
		d.held += e.TextWeights
	}
	return d
}

// componentSet is a set of Components.
type componentSet uint8

func (s componentSet) has(c Component) bool { return s&(1<<c) != 0 }

func (s *componentSet) add(c Component) { *s |= 1 << c }

// MemoryError reports a request whose estimate exceeds the memory budget
// on its own. Fit is the largest size with the request's aspect ratio and
// images that fits (0×0 when none does), FitImages the most images of the
// request's size that fit (0 when not even one does). VAETile is the tile
// of the VAE that Need counts (0: untiled): a request is refused only when
// even its tiled decode does not fit, unless WithTiledVAE turned tiling
// off.
type MemoryError struct {
	Need, Budget          int64
	Width, Height, Images int
	FitWidth, FitHeight   int
	FitImages             int
	VAETile               int
}

func (e *MemoryError) Error() string {
	tiled := ""
	if e.VAETile > 0 {
		tiled = fmt.Sprintf(" with the VAE in %d-pixel tiles", e.VAETile)
	}
	s := fmt.Sprintf("sd: %dx%d with %d image(s) needs about %s%s, more than the memory budget of %s",
		e.Width, e.Height, e.Images, gib(e.Need), tiled, gib(e.Budget))
	switch {
	case e.FitImages >= 1 && e.Images > 1:
		s += fmt.Sprintf("; %d image(s) of that size fit", e.FitImages)
	case e.FitWidth > 0:
		s += fmt.Sprintf("; the largest size that fits is %dx%d", e.FitWidth, e.FitHeight)
	default:
		s += "; no size fits"
	}
	return s
}

// Is makes errors.Is(err, ErrMemory) true.
func (e *MemoryError) Is(target error) bool { return target == ErrMemory }

func gib(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d MiB", (n+1<<20-1)>>20)
}

// memShape is what decides a request's memory.
type memShape struct {
	width, height, images int
	guided                bool // classifier-free guidance: two UNet rows per image
	chunks                int  // 75-token chunks of the longer prompt
	img2img               bool
}

// memoryModel estimates requests' memory and admits them.
type memoryModel struct {
	sig       map[Component]*memSignature
	seq       int64 // tokens per chunk (the text encoder's sequence)
	latentCh  int64
	budget    int64
	te2       *memSignature // SDXL's text_encoder_2, or nil
	textLoad  int64         // the text encoders' weights, which a request loads (WithOffload), else 0
	freed     componentSet  // the components whose calls give their memory back (see the top of this file)
	maxChunks int           // 0: no limit
	tiling    tilingConfig
	tiles     []int // the VAE tiles to try, largest first (tiling.go)
	gate      *memoryGate
}

// estimate returns the memory of a request of shape s, with the VAE tiled
// when WithTiledVAE says so: always (On), or when the plain decode does
// not fit the budget, in the largest of m.tiles that fits (else in the one
// that needs least, when that is less than the plain decode).
func (m *memoryModel) estimate(s memShape) MemoryEstimate {
	best := m.estimateTiled(s, 0)
	if m.tiling.when == Off || (m.tiling.when == 0 && best.Total() <= m.budget) {
		return best
	}
	for _, t := range m.tiles {
		if s.width <= t && s.height <= t {
			continue // one tile: the plain decode
		}
		e := m.estimateTiled(s, t)
		e.VAETile = t
		if m.tiling.when == On || e.Total() < best.Total() {
			best = e
		}
		if best.Total() <= m.budget {
			break
		}
	}
	return best
}

// estimateTiled returns the memory of a request of shape s with the VAE in
// tiles of tile pixels (0: untiled).
func (m *memoryModel) estimateTiled(s memShape, tile int) MemoryEstimate {
	rows := int64(1)
	if s.guided {
		rows = 2
	}
	imgs := int64(max(s.images, 1))
	chunks := int64(max(s.chunks, 1))
	lh, lw := int64(s.height/8), int64(s.width/8)
	var e MemoryEstimate
	e.TextEncoder = m.sig[TextEncoder].need(callShape{rows: rows * chunks, h: m.seq, w: 1})
	// SDXL's text_encoder_2 runs after it, and its session keeps its own peak
	e.TextEncoder += m.te2.need(callShape{rows: rows * chunks, h: m.seq, w: 1})
	e.TextWeights = m.textLoad // offloaded: the request loads them (offload.go)
	e.freed = m.freed
	e.UNet = m.sig[UNet].need(callShape{rows: rows * imgs, h: lh, w: lw, keys: m.seq * chunks, visual: true})
	dh, dw, ph, pw := lh, lw, int64(s.height), int64(s.width) // one VAE call's latents and pixels
	var tiles int64
	if tile > 0 {
		lt := int64(tile / 8)
		dh, dw, ph, pw = min(lh, lt), min(lw, lt), min(ph, int64(tile)), min(pw, int64(tile))
		stride := lt - lt/4
		cols := (lw + stride - 1) / stride
		// two rows of blended tiles, decoded pixels and encoded moments
		tiles = 2 * cols * 4 * (3*64*dh*dw + 2*m.latentCh*dh*dw)
	}
	e.VAEDecoder = m.sig[VAEDecoder].need(callShape{rows: 1, h: dh, w: dw, visual: true}) // one image at a time
	if s.img2img {
		e.VAEEncoder = m.sig[VAEEncoder].need(callShape{rows: 1, h: ph, w: pw, visual: true})
	}
	pixels := int64(s.width) * int64(s.height)
	e.Buffers = imgs*(3*4*pixels+4*pixels+2*4*m.latentCh*lh*lw) + // decoded floats, RGBA, latents
		rows*chunks*m.seq*1024*4 + // text embeddings (1024: the widest text encoder's hidden size)
		tiles
	return e
}

// check refuses a request that can never fit, naming what would.
func (m *memoryModel) check(s memShape) (MemoryEstimate, error) {
	e := m.estimate(s)
	if e.Total() <= m.budget {
		return e, nil
	}
	me := &MemoryError{Need: e.Total(), Budget: m.budget, Width: s.width, Height: s.height, Images: max(s.images, 1), VAETile: e.VAETile}
	me.FitWidth, me.FitHeight = m.largest(s)
	for n := max(s.images, 1) - 1; n >= 1; n-- {
		t := s
		t.images = n
		if m.estimate(t).Total() <= m.budget {
			me.FitImages = n
			break
		}
	}
	return e, me
}

// largest returns the largest size with s's aspect ratio, in multiples of
// 8 up to MaxSize, whose estimate fits the budget; 0×0 when none does.
func (m *memoryModel) largest(s memShape) (w, h int) {
	if s.width <= 0 || s.height <= 0 {
		return 0, 0
	}
	aspect := float64(s.height) / float64(s.width)
	size := func(k int) (int, int) { // k: the width in eighths of a pixel block
		w := 8 * k
		h := int(math.Round(aspect*float64(w)/8)) * 8
		return w, max(h, 8)
	}
	fits := func(k int) bool {
		t := s
		t.width, t.height = size(k)
		return t.height <= maxRequestSize && m.estimate(t).Total() <= m.budget
	}
	lo, hi := 0, maxRequestSize/8 // fits(lo) or lo == 0; the estimate grows with the size
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if fits(mid) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0 {
		return 0, 0
	}
	return size(lo)
}

// maxRequestSize is the largest width or height of a request.
const maxRequestSize = 4096

// promptCost returns the chunks of a weighted prompt and checks its
// weights against MaxPromptWeight.
func promptCost(tok *tokenizer.CLIP, field, prompt string) (int, error) {
	frags, err := tokenizer.ParseWeighted(prompt)
	if err != nil {
		return 0, &RequestError{Field: field, Reason: err.Error()}
	}
	for _, f := range frags {
		if w := f.Weight; math.IsNaN(w) || math.IsInf(w, 0) || math.Abs(w) > MaxPromptWeight {
			text := f.Text
			if len(text) > 40 {
				text = text[:40] + "…"
			}
			return 0, &RequestError{Field: field, Reason: fmt.Sprintf("the weight of %q is %g, outside [-%d, %d] (nested brackets multiply: each ( ) by 1.1)", text, w, MaxPromptWeight, MaxPromptWeight)}
		}
	}
	if tok == nil {
		return 1, nil
	}
	p, err := tok.EncodeWeighted(prompt)
	if err != nil {
		return 0, &RequestError{Field: field, Reason: err.Error()}
	}
	return len(p.Chunks), nil
}

// memoryConfig is what WithMemoryBudget and WithMaxPromptChunks record.
type memoryConfig struct {
	budget    int64 // 0: from the machine
	maxChunks int   // 0: no limit
	tiling    tilingConfig
}

func (c memoryConfig) check() []error {
	errs := c.tiling.check()
	if c.budget < 0 {
		errs = append(errs, fmt.Errorf("sd: WithMemoryBudget: negative budget %d", c.budget))
	}
	if c.maxChunks < 0 {
		errs = append(errs, fmt.Errorf("sd: WithMaxPromptChunks: negative limit %d", c.maxChunks))
	}
	return errs
}

// WithMemoryBudget sets the memory that the requests in flight may need
// together, in bytes, on top of the loaded models (default: 80% of the
// memory available to the process once the models are loaded: the
// cgroup's limit less its usage, else MemAvailable; no admission at all
// when neither is known). A request estimated above it on its own gets a
// *MemoryError; one that fits waits in Submit until it fits beside the
// others. math.MaxInt64 turns admission off.
func WithMemoryBudget(bytes int64) EngineOption {
	return func(c *engineConfig) { c.memory.budget = bytes }
}

// WithMaxPromptChunks bounds the length of a prompt (and of the negative
// prompt) to n chunks of 75 tokens (BREAK starts a chunk); a longer one
// gets a *RequestError naming the limit. 0, the default, is no limit, as
// in AUTOMATIC1111; a service should set one, since every chunk costs a
// text-encoder row and widens every cross-attention.
func WithMaxPromptChunks(n int) EngineOption {
	return func(c *engineConfig) { c.memory.maxChunks = n }
}

// readSignature reads the memory signature of component c from the model
// file ONNX Runtime loaded (the rewritten one, when rewritten).
func (f *Folder) readSignature(c Component, path string, log interface{ Warn(string, ...any) }) {
	st, err := onnxpb.ReadStructure(path)
	if err != nil {
		log.Warn("sd: no memory estimate for a component", "component", c.String(), "error", err)
		return
	}
	f.sigMu.Lock()
	defer f.sigMu.Unlock()
	if f.sigs == nil {
		f.sigs = map[Component]*memSignature{}
	}
	f.sigs[c] = analyze(st)
}

// newMemoryModel returns the admission of a Model on f, opened with load,
// with its budget taken now, after the models are loaded.
func newMemoryModel(f *Folder, c memoryConfig, load *loadConfig) *memoryModel {
	m := &memoryModel{sig: map[Component]*memSignature{}, seq: 77, latentCh: 4, maxChunks: c.maxChunks, budget: c.budget, tiling: c.tiling}
	for _, k := range components {
		if load.sessionOptions(k).DisableMemoryArena {
			m.freed.add(k) // its calls' memory goes back when they end
		}
	}
	m.tiles = vaeTiles(m.tiling, f)
	if f.VAEDecoder == nil { // a checkpoint's runtime components: their VAE does not tile
		m.tiling.when = Off
	}
	f.sigMu.Lock()
	for k, s := range f.sigs {
		m.sig[k] = s
	}
	m.te2 = f.te2Sig
	f.sigMu.Unlock()
	if f.offText != nil {
		m.textLoad = f.offText.weights
		m.freed.add(TextEncoder) // closed once no encoding is in flight
	}
	if f.Tokenizer != nil {
		m.seq = int64(f.Tokenizer.MaxLength())
	}
	if f.UNet != nil {
		m.latentCh = int64(f.UNet.OutChannels())
	}
	if m.budget == 0 {
		m.budget = machineMemory() / 10 * 8
		if m.budget <= 0 {
			m.budget = math.MaxInt64 // nothing known: no admission
		}
	}
	m.gate = &memoryGate{budget: m.budget}
	return m
}

// shape resolves what decides req's memory, and checks its prompts.
// valid is false for a request whose size the engine will refuse anyway.
func (m *memoryModel) shape(req Request, d Defaults, tok *tokenizer.CLIP) (s memShape, valid bool, err error) {
	s.width, s.height = req.Width, req.Height
	if req.InitImage != nil {
		b := req.InitImage.Bounds()
		s.width, s.height = cmp.Or(s.width, b.Dx()), cmp.Or(s.height, b.Dy())
		s.img2img = true
	}
	s.width, s.height = cmp.Or(s.width, d.Width), cmp.Or(s.height, d.Height)
	s.images = max(req.ImagesPerPrompt, 1)
	g := d.GuidanceScale
	if req.GuidanceScale != nil {
		g = *req.GuidanceScale
	}
	s.guided = g > 1
	s.chunks = 1
	if !req.LiteralPrompt {
		n, err := promptCost(tok, "Prompt", req.Prompt)
		if err != nil {
			return s, false, err
		}
		s.chunks = n
		if s.guided {
			if n, err = promptCost(tok, "NegativePrompt", req.NegativePrompt); err != nil {
				return s, false, err
			}
			s.chunks = max(s.chunks, n)
		}
		if m.maxChunks > 0 && s.chunks > m.maxChunks {
			field := "Prompt"
			if n > m.maxChunks {
				field = "NegativePrompt"
			}
			return s, false, &RequestError{Field: field, Reason: fmt.Sprintf("%d chunks of 75 tokens, more than the limit of %d (BREAK starts a chunk)", s.chunks, m.maxChunks)}
		}
	}
	valid = s.width >= 8 && s.height >= 8 && s.width <= maxRequestSize && s.height <= maxRequestSize &&
		s.width%8 == 0 && s.height%8 == 0 && req.ImagesPerPrompt >= 0 && req.ImagesPerPrompt <= MaxImagesPerPrompt
	return s, valid, nil
}

// admit checks req against the limits and waits until its memory fits
// beside the requests in flight; release gives the memory back, and tile
// is the VAE's tile for the request (0: untiled).
func (m *memoryModel) admit(ctx context.Context, req Request, d Defaults, tok *tokenizer.CLIP) (release func(), tile int, err error) {
	s, valid, err := m.shape(req, d, tok)
	if err != nil {
		return nil, 0, err
	}
	if !valid {
		return func() {}, 0, nil // the engine refuses the invalid ones itself
	}
	if m.budget == math.MaxInt64 {
		return func() {}, m.estimate(s).VAETile, nil // tiled only when forced
	}
	e, err := m.check(s)
	if err != nil {
		return nil, 0, err
	}
	release, err = m.gate.acquire(ctx, e.demand())
	return release, e.VAETile, err
}

// EstimateMemory returns the memory req is estimated to need, as Submit
// admits it against the budget, or the *RequestError of its prompts.
func (m *Model) EstimateMemory(req Request) (MemoryEstimate, error) {
	s, _, err := m.mem.shape(req, m.defaults, m.f.Tokenizer)
	if err != nil {
		return MemoryEstimate{}, err
	}
	return m.mem.estimate(s), nil
}

// MemoryBudget returns the memory budget of the requests in flight
// (math.MaxInt64: no admission), and how much of it they hold now.
func (m *Model) MemoryBudget() (budget, inUse int64) {
	return m.mem.budget, m.mem.gate.inUse()
}

// LargestSize returns the largest image size, in multiples of 8, with
// req's aspect ratio (its size, else the default's) and its other fields,
// that fits the memory budget on its own; 0×0 when none does.
func (m *Model) LargestSize(req Request) (width, height int) {
	s, _, err := m.mem.shape(req, m.defaults, m.f.Tokenizer)
	if err != nil {
		s.width, s.height = cmp.Or(req.Width, m.defaults.Width), cmp.Or(req.Height, m.defaults.Height)
		s.images, s.chunks, s.guided = max(req.ImagesPerPrompt, 1), 1, true
	}
	if m.mem.budget == math.MaxInt64 {
		return maxRequestSize, maxRequestSize * max(s.height, 1) / max(s.width, 1) / 8 * 8
	}
	return m.mem.largest(s)
}

// Check returns the error Submit would return at once for req (a
// *RequestError or a *MemoryError) without queueing or waiting: what a
// service that answers before it runs the request (an async job) needs.
func (m *Model) Check(req Request) error {
	e, req, _, err := req.prepare()
	if err != nil {
		return err
	}
	s, valid, err := m.mem.shape(req, m.defaults, m.f.Tokenizer)
	if err != nil {
		return err
	}
	if err := m.p.Check(e); err != nil {
		return engineError(err)
	}
	if valid && m.mem.budget != math.MaxInt64 {
		if _, err := m.mem.check(s); err != nil {
			return err
		}
	}
	return nil
}
