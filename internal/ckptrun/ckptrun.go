// Package ckptrun runs the UNet and text-encoder graphs that internal/ckpt
// builds with LoRA branches, applying LoRAs per call: a Library resolves
// LoRA names from a folder (parsed once, then kept), and UNet and
// TextEncoder feed each call the branch inputs of its rows' LoRAs (see
// ckpt.Branch). Switching LoRAs rebuilds nothing; the inputs of a batch's
// LoRA mix are prepared once and reused by every step. UNet implements
// pipeline.LoRADenoiser and TextEncoder pipeline.LoRAEncoder. All types are
// safe for concurrent use; the caller must Close UNet and TextEncoder.
package ckptrun

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/vae"
	"gorgonia.org/tensor"
)

// Library is a folder of LoRA files for one model, by name (the file name
// without extension, as AUTOMATIC1111 names them; files in sub-folders
// too). Files are parsed on first use and kept.
type Library struct {
	dir         string
	targets     ckpt.Targets
	skipUnknown bool

	mu     sync.Mutex
	files  map[string]string // name → path
	loaded map[string]*ckpt.LoRA
}

// loraExts are the file types a LoRA folder may hold.
var loraExts = []string{".safetensors", ".pt", ".ckpt"}

// NewLibrary lists the LoRA files under dir for a model whose layers are
// targets. skipUnknown makes keys that fit no layer be skipped instead of
// failing the LoRA.
func NewLibrary(dir string, targets ckpt.Targets, skipUnknown bool) (*Library, error) {
	l := &Library{dir: dir, targets: targets, skipUnknown: skipUnknown, loaded: map[string]*ckpt.LoRA{}}
	if err := l.Rescan(); err != nil {
		return nil, err
	}
	return l, nil
}

// Rescan lists the folder again (files added since are found).
func (l *Library) Rescan() error {
	files := map[string]string{}
	err := filepath.WalkDir(l.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		ext := strings.ToLower(filepath.Ext(p))
		if d.IsDir() || !slices.Contains(loraExts, ext) {
			return nil
		}
		name := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
		if _, dup := files[name]; !dup {
			files[name] = p
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ckptrun: LoRA folder: %w", err)
	}
	l.mu.Lock()
	l.files = files
	l.mu.Unlock()
	return nil
}

// Names returns the LoRA names of the folder, sorted.
func (l *Library) Names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for n := range l.files {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Path returns the file of the LoRA named name.
func (l *Library) Path(name string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.files[name]
	return p, ok
}

// ErrUnknownLoRA is wrapped by the error for a name the folder lacks.
var ErrUnknownLoRA = errors.New("no such LoRA")

// Load returns the parsed LoRA named name.
func (l *Library) Load(name string) (*ckpt.LoRA, error) {
	l.mu.Lock()
	if x, ok := l.loaded[name]; ok {
		l.mu.Unlock()
		return x, nil
	}
	p, ok := l.files[name]
	l.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("ckptrun: %q: %w in %s", name, ErrUnknownLoRA, l.dir)
	}
	x, err := ckpt.LoadLoRA(p, l.targets, l.skipUnknown)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.loaded[name]; ok { // loaded concurrently
		return old, nil
	}
	l.loaded[name] = x
	return x, nil
}

// Check loads the LoRA named name, reporting why it cannot be applied.
func (l *Library) Check(name string) error {
	_, err := l.Load(name)
	return err
}

// runner runs one branched graph: its fixed inputs plus the branch inputs
// of a LoRA mix, prepared once per mix (an LRU of recent mixes).
type runner struct {
	s         *ort.Session
	ins       []ort.IOInfo
	fixed     map[string]int // fixed input name → position
	branches  *ckpt.Branches
	component ckpt.Component
	lib       *Library

	mu    sync.Mutex
	order *list.List // of string keys, most recent first
	cache map[string]*prepared
}

type prepared struct {
	key   string
	elem  *list.Element
	value []ort.Tensor // by input position; fixed inputs left zero
	err   error
	done  chan struct{}
}

const cachedMixes = 8

func openRunner(ctx context.Context, path string, c ckpt.Component, fixed, optional []string, output string, lib *Library, o ort.Options) (*runner, error) {
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return nil, fmt.Errorf("ckptrun: %w", err)
	}
	r := &runner{ins: ins, fixed: map[string]int{}, component: c, lib: lib, order: list.New(), cache: map[string]*prepared{}}
	shapes := map[string][]int64{}
	for i, in := range ins {
		if slices.Contains(fixed, in.Name) || slices.Contains(optional, in.Name) {
			r.fixed[in.Name] = i
			continue
		}
		if !strings.HasPrefix(in.Name, "lora.") || in.DType != ort.Float32 {
			return nil, fmt.Errorf("ckptrun: %s: unexpected input %s (a graph built with LoRA branches in float32 is needed)", path, in)
		}
		shapes[in.Name] = in.Shape
	}
	for _, n := range fixed {
		if _, ok := r.fixed[n]; !ok {
			return nil, fmt.Errorf("ckptrun: %s: no input %s", path, n)
		}
	}
	if r.branches, err = ckpt.BranchesFromInputs(c, shapes); err != nil {
		return nil, fmt.Errorf("ckptrun: %s: %w", path, err)
	}
	var out []ort.IOInfo
	for _, v := range outs {
		if v.Name == output {
			out = append(out, v)
		}
	}
	if len(out) != 1 {
		return nil, fmt.Errorf("ckptrun: %s: no output %s", path, output)
	}
	if r.s, err = ort.Open(ctx, path, ins, out, o); err != nil {
		return nil, fmt.Errorf("ckptrun: %w", err)
	}
	return r, nil
}

// mixKey names a batch's LoRA rows.
func mixKey(rows [][]pipeline.LoRA) string {
	var b strings.Builder
	for _, row := range rows {
		for _, l := range row {
			b.WriteString(strconv.Quote(l.Name))
			b.WriteByte(':')
			b.WriteString(strconv.FormatFloat(l.Multiplier, 'g', -1, 64))
			b.WriteByte(',')
		}
		b.WriteByte(';')
	}
	return b.String()
}

// inputs returns the branch inputs for rows, preparing them at most once
// per mix even when calls race.
func (r *runner) inputs(rows [][]pipeline.LoRA) ([]ort.Tensor, error) {
	key := mixKey(rows)
	r.mu.Lock()
	if p, ok := r.cache[key]; ok {
		r.order.MoveToFront(p.elem)
		r.mu.Unlock()
		<-p.done
		return p.value, p.err
	}
	p := &prepared{key: key, done: make(chan struct{})}
	p.elem = r.order.PushFront(p)
	r.cache[key] = p
	for r.order.Len() > cachedMixes {
		old := r.order.Remove(r.order.Back()).(*prepared)
		delete(r.cache, old.key)
	}
	r.mu.Unlock()
	p.value, p.err = r.prepare(rows)
	close(p.done)
	if p.err != nil {
		r.mu.Lock()
		if r.cache[key] == p {
			r.order.Remove(p.elem)
			delete(r.cache, key)
		}
		r.mu.Unlock()
	}
	return p.value, p.err
}

func (r *runner) prepare(rows [][]pipeline.LoRA) ([]ort.Tensor, error) {
	applied := make([][]ckpt.Applied, len(rows))
	for i, row := range rows {
		for _, l := range row {
			if r.lib == nil {
				return nil, fmt.Errorf("ckptrun: LoRA %q: the model was opened without a LoRA folder", l.Name)
			}
			x, err := r.lib.Load(l.Name)
			if err != nil {
				return nil, err
			}
			applied[i] = append(applied[i], ckpt.Applied{LoRA: x, Multiplier: float32(l.Multiplier)})
		}
	}
	bi, err := ckpt.BranchInputs(r.branches, r.component, applied)
	if err != nil {
		return nil, err
	}
	out := make([]ort.Tensor, len(r.ins))
	for i, in := range r.ins {
		if _, isFixed := r.fixed[in.Name]; isFixed {
			continue
		}
		t, ok := bi[in.Name]
		if !ok {
			return nil, fmt.Errorf("ckptrun: no value for branch input %s", in.Name)
		}
		out[i] = ort.Tensor{Shape: t.Shape, Data: t.Data}
	}
	return out, nil
}

// run runs the graph with fixed inputs and the rows' branch inputs.
func (r *runner) run(ctx context.Context, fixed map[string]ort.Tensor, rows [][]pipeline.LoRA, out []ort.Tensor) error {
	branch, err := r.inputs(rows)
	if err != nil {
		return err
	}
	in := slices.Clone(branch)
	for name, i := range r.fixed {
		in[i] = fixed[name]
	}
	if err := r.s.Run(ctx, in, out); err != nil {
		return fmt.Errorf("ckptrun: %w", err)
	}
	return nil
}

// UNet is a branched UNet graph (sample, timestep float32 [batch],
// encoder_hidden_states → out_sample, as ckpt.Build writes it).
type UNet struct{ r *runner }

// OpenUNet opens the branched UNet at path, with LoRAs from lib.
func OpenUNet(ctx context.Context, path string, lib *Library, o ort.Options) (*UNet, error) {
	r, err := openRunner(ctx, path, ckpt.UNet, []string{"sample", "timestep", "encoder_hidden_states"}, nil, "out_sample", lib, o)
	if err != nil {
		return nil, err
	}
	return &UNet{r}, nil
}

// Predict runs the UNet without LoRAs.
func (u *UNet) Predict(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense) (*tensor.Dense, error) {
	return u.PredictLoRA(ctx, sample, ts, cond, nil)
}

// PredictLoRA runs the UNet with rows[i]'s LoRAs on row i (nil rows: none).
func (u *UNet) PredictLoRA(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense, rows [][]pipeline.LoRA) (*tensor.Dense, error) {
	ss, cs := sample.Shape(), cond.Shape()
	if len(ss) != 4 || len(cs) != 3 || ss[0] != cs[0] || (len(ts) != 1 && len(ts) != ss[0]) {
		return nil, fmt.Errorf("ckptrun: unet: sample %v, encoder_hidden_states %v, %d timesteps", ss, cs, len(ts))
	}
	b := ss[0]
	if rows == nil {
		rows = make([][]pipeline.LoRA, b)
	}
	if len(rows) != b {
		return nil, fmt.Errorf("ckptrun: unet: %d LoRA rows for batch %d", len(rows), b)
	}
	t := make([]float32, b)
	for i := range t {
		t[i] = float32(ts[min(i, len(ts)-1)])
	}
	out := []ort.Tensor{{Shape: []int64{int64(b), int64(ss[1]), int64(ss[2]), int64(ss[3])}}}
	if ss[1] == 9 { // inpainting: the prediction has the latent channels
		out[0].Shape[1] = 4
	}
	fixed := map[string]ort.Tensor{
		"sample":                {Shape: []int64{int64(b), int64(ss[1]), int64(ss[2]), int64(ss[3])}, Data: sample.Data().([]float32)},
		"timestep":              {Shape: []int64{int64(b)}, Data: t},
		"encoder_hidden_states": {Shape: []int64{int64(b), int64(cs[1]), int64(cs[2])}, Data: cond.Data().([]float32)},
	}
	if err := u.r.run(ctx, fixed, rows, out); err != nil {
		return nil, err
	}
	s := out[0].Shape
	return tensor.New(tensor.WithShape(int(s[0]), int(s[1]), int(s[2]), int(s[3])), tensor.WithBacking(out[0].Data.([]float32))), nil
}

// CheckLoRA reports whether the LoRA named name can be applied.
func (u *UNet) CheckLoRA(name string) error {
	if u.r.lib == nil {
		return fmt.Errorf("ckptrun: LoRA %q: the model was opened without a LoRA folder", name)
	}
	return u.r.lib.Check(name)
}

// Close frees the session.
func (u *UNet) Close() error { return u.r.s.Close() }

// TextEncoder is a text-encoder graph built by ckpt (input_ids int32 →
// last_hidden_state), with LoRA branches and the extra-token input for
// textual-inversion embeddings when it has them.
type TextEncoder struct {
	r      *runner
	hidden int
	extra  *ort.Tensor // the embeddings' table, or nil
}

// OpenTextEncoder opens the text encoder at path of hidden size hidden,
// with LoRAs from lib (nil for none) and the vectors of emb (nil for none;
// the graph must then have been built with ExtraTokens).
func OpenTextEncoder(ctx context.Context, path string, c ckpt.Component, hidden int, lib *Library, emb *Embeddings, o ort.Options) (*TextEncoder, error) {
	r, err := openRunner(ctx, path, c, []string{"input_ids"}, []string{ckpt.ExtraTokensInput}, "last_hidden_state", lib, o)
	if err != nil {
		return nil, err
	}
	e := &TextEncoder{r: r, hidden: hidden}
	if _, ok := r.fixed[ckpt.ExtraTokensInput]; ok {
		if emb == nil {
			emb = &Embeddings{}
		}
		t, k := emb.Table(hidden)
		e.extra = &ort.Tensor{Shape: []int64{k, int64(hidden)}, Data: t}
	} else if emb != nil && emb.total > 0 {
		r.s.Close()
		return nil, fmt.Errorf("ckptrun: %s has no %s input for textual-inversion embeddings", path, ckpt.ExtraTokensInput)
	}
	return e, nil
}

// Encode runs the encoder without LoRAs.
func (e *TextEncoder) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	return e.EncodeLoRA(ctx, ids, batch, nil)
}

// EncodeLoRA runs the encoder with loras on every row.
func (e *TextEncoder) EncodeLoRA(ctx context.Context, ids []int32, batch int, loras []pipeline.LoRA) (*tensor.Dense, error) {
	if batch <= 0 || len(ids) == 0 || len(ids)%batch != 0 {
		return nil, fmt.Errorf("ckptrun: text encoder: %d ids for batch %d", len(ids), batch)
	}
	seq := len(ids) / batch
	rows := make([][]pipeline.LoRA, batch)
	for i := range rows {
		rows[i] = loras
	}
	out := []ort.Tensor{{Shape: []int64{int64(batch), int64(seq), int64(e.hidden)}}}
	fixed := map[string]ort.Tensor{"input_ids": {Shape: []int64{int64(batch), int64(seq)}, Data: ids}}
	if e.extra != nil {
		fixed[ckpt.ExtraTokensInput] = *e.extra
	}
	if err := e.r.run(ctx, fixed, rows, out); err != nil {
		return nil, err
	}
	return tensor.New(tensor.WithShape(batch, seq, e.hidden), tensor.WithBacking(out[0].Data.([]float32))), nil
}

// Close frees the session.
func (e *TextEncoder) Close() error { return e.r.s.Close() }

// assert the pipeline interfaces.
var (
	_ pipeline.LoRADenoiser = (*UNet)(nil)
	_ pipeline.LoRAEncoder  = (*TextEncoder)(nil)
)

// Options configure Open.
type Options struct {
	// LoRADir is the folder of LoRAs requests may name ("" for none).
	LoRADir             string
	SkipUnknownLoRAKeys bool
	// EmbeddingsDir is the folder of textual-inversion embeddings prompts
	// may name ("" for none).
	EmbeddingsDir string
	// ORT gives the session options of a component ("text_encoder",
	// "unet", "vae_decoder", "vae_encoder"); nil means the defaults.
	ORT func(component string) ort.Options
}

// Components are the models of a folder built by ckpt.Build with
// LoRABranches and ExtraTokens, ready for the pipeline. The caller must
// Close them.
type Components struct {
	pipeline.Components
	LoRAs      *Library    // nil without Options.LoRADir
	Embeddings *Embeddings // empty without Options.EmbeddingsDir
	ImageSize  int         // the image side the model was trained for
	closers    []func() error
}

// Close closes every session. It is idempotent.
func (c *Components) Close() error {
	var errs []error
	for _, f := range c.closers {
		errs = append(errs, f())
	}
	c.closers = nil
	return errors.Join(errs...)
}

// Open opens the folder of b (built with LoRABranches and ExtraTokens for
// SD 1.x or 2.x) with the LoRAs and embeddings of o.
func Open(ctx context.Context, b *ckpt.Built, o Options) (_ *Components, err error) {
	if len(b.Arch.Text) != 1 {
		return nil, fmt.Errorf("ckptrun: %s models are not supported yet (one text encoder only)", b.Arch.Family)
	}
	opts := func(c string) ort.Options {
		if o.ORT == nil {
			return ort.Options{}
		}
		return o.ORT(c)
	}
	c := &Components{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	if o.LoRADir != "" {
		if c.LoRAs, err = NewLibrary(o.LoRADir, b.Targets, o.SkipUnknownLoRAKeys); err != nil {
			return nil, err
		}
	}
	t := b.Arch.Text[0]
	if c.Embeddings, err = LoadEmbeddings(o.EmbeddingsDir, t.Vocab, []int{t.Hidden}); err != nil {
		return nil, err
	}
	path := func(d string) string { return filepath.Join(b.Dir, d, "model.onnx") }
	tok, err := NewTokenizer(filepath.Join(b.Dir, "tokenizer"), c.Embeddings)
	if err != nil {
		return nil, err
	}
	te, err := OpenTextEncoder(ctx, path("text_encoder"), ckpt.TextEncoder, t.Hidden, c.LoRAs, c.Embeddings, opts("text_encoder"))
	if err != nil {
		return nil, err
	}
	c.closers = append(c.closers, te.Close)
	un, err := OpenUNet(ctx, path("unet"), c.LoRAs, opts("unet"))
	if err != nil {
		return nil, err
	}
	c.closers = append(c.closers, un.Close)
	dec, err := vae.OpenDecoder(ctx, path("vae_decoder"), opts("vae_decoder").Session())
	if err != nil {
		return nil, err
	}
	c.closers = append(c.closers, dec.Close)
	enc, err := vae.OpenEncoder(ctx, path("vae_encoder"), opts("vae_encoder").Session())
	if err != nil {
		return nil, err
	}
	c.closers = append(c.closers, enc.Close)
	sc, err := scheduler.LoadConfig(filepath.Join(b.Dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		return nil, err
	}
	c.ImageSize = b.Arch.ImageSize
	c.Components = pipeline.Components{Tokenizer: tok, TextEncoder: te, UNet: un, VAEDecoder: dec, VAEEncoder: enc,
		Scheduler: sc, ScalingFactor: b.Arch.VAE.ScalingFactor, LatentChannels: b.Arch.VAE.LatentChannels,
		UNetTimestepPerItem: true}
	return c, nil
}
