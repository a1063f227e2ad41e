package sd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// Stable Diffusion XL: a second tokenizer and text encoder (OpenCLIP
// ViT-bigG in the real model), whose penultimate hidden states are
// concatenated to the first encoder's, and whose pooled text_embeds go to
// the UNet with the size and crop conditioning (time_ids).
const (
	tokenizer2Dir = "tokenizer_2"
	textEncoder2  = "text_encoder_2"
	// sdxlTimeIDs is the width of SDXL base's time_ids: original size,
	// crop top-left and target size (the refiner's 5 carry an aesthetic
	// score instead of the target size)
	sdxlTimeIDs = 6
)

// xlLayout is what inspect learned of an SDXL folder's second encoder.
type xlLayout struct {
	te        *textenc.Signature // text_encoder_2, Penultimate(true)
	tok       *tokenizer.CLIP    // tokenizer_2
	projDim   int                // text_encoder_2/config.json's projection_dim, or 0
	zeroEmpty bool               // model_index.json's force_zeros_for_empty_prompt (diffusers' default true)
}

// isXL reports whether model_index.json describes an SDXL pipeline.
func isXL(idx ModelIndex) bool {
	e, ok := idx.Components[textEncoder2]
	return ok && e.Class != "" || strings.Contains(idx.ClassName, "XL")
}

// checkXLIndex refuses the SDXL pipelines that are not supported: those
// without the first text encoder (the refiner).
func (in *inspector) checkXLIndex(idx ModelIndex) {
	if !isXL(idx) {
		return
	}
	if e, ok := idx.Components["text_encoder"]; ok && e.Class == "" {
		in.fail(indexFile, &problem{
			msg: fmt.Sprintf("%s has no text_encoder (the SDXL refiner), which is not supported", cmpOr(idx.ClassName, "the pipeline")),
			err: ErrUnsupported})
	}
}

// readXL checks tokenizer_2 and text_encoder_2 of an SDXL folder and
// selects the outputs SDXL conditions on: the penultimate hidden states of
// both encoders and the second one's text_embeds.
func (in *inspector) readXL(lay *layout) {
	if !isXL(lay.index) {
		return
	}
	xl := &xlLayout{zeroEmpty: true}
	var raw struct {
		ForceZeros *bool `json:"force_zeros_for_empty_prompt"`
	}
	if err := readJSON(in.path(indexFile), &raw); err == nil && raw.ForceZeros != nil {
		xl.zeroEmpty = *raw.ForceZeros
	}
	in.checkTokenizerAt(tokenizer2Dir)
	penultimate := func(folder string, sig signature, pooled bool) *textenc.Signature {
		te, ok := sig.(*textenc.Signature)
		if !ok {
			return nil // absent or broken: recorded
		}
		p, err := te.Penultimate(pooled)
		if err != nil {
			msg := err.Error()
			if se, ok := errors.AsType[*session.SignatureError](err); ok {
				msg = se.Reason
			}
			in.fail(folder+"/"+modelFile, &problem{msg: "not an SDXL text encoder: " + msg, err: err})
			return nil
		}
		return p
	}
	if te := penultimate(TextEncoder.String(), lay.sigs[TextEncoder], false); te != nil {
		lay.sigs[TextEncoder] = te
	} else {
		lay.sigs[TextEncoder] = nil
	}
	xl.te = penultimate(textEncoder2, in.readModelAt(TextEncoder, textEncoder2), true)
	var cfg struct {
		ProjectionDim int `json:"projection_dim"`
	}
	if err := readJSON(in.path(textEncoder2+"/"+configFile), &cfg); err == nil {
		xl.projDim = cfg.ProjectionDim
	} else if !errors.Is(err, fs.ErrNotExist) {
		in.fail(textEncoder2+"/"+configFile, err)
	}
	if xl.te != nil && xl.te.PooledWidth() == 0 {
		xl.te = xl.te.WithPooledWidth(xl.projDim) // a float16 text_embeds needs its width
	}
	lay.xl = xl
}

// checkXL loads tokenizer_2 and checks that the SDXL parts fit together:
// the tokenizers agree but for padding, the UNet takes the added
// conditioning of the second encoder's width and SDXL base's time ids. A
// UNet that takes them in a folder without text_encoder_2 is refused.
func (in *inspector) checkXL(lay *layout) {
	un, _ := lay.sigs[UNet].(*unet.Signature)
	xl := lay.xl
	if xl == nil {
		if un != nil && un.HasAdded() {
			in.fail(UNet.String()+"/"+modelFile, &problem{
				msg: "the UNet takes text_embeds and time_ids (SDXL), but the folder has no text_encoder_2", err: ErrUnsupported})
		}
		return
	}
	mismatch := func(file, format string, args ...any) {
		in.fail(file, &problem{msg: fmt.Sprintf(format, args...), err: ErrMismatch})
	}
	tok2, err := tokenizer.Load(in.path(tokenizer2Dir))
	if err != nil {
		in.fail(tokenizer2Dir, err)
		return
	}
	xl.tok = tok2
	tok := lay.tok
	if tok2.VocabSize() != tok.VocabSize() || tok2.MaxLength() != tok.MaxLength() || tok2.EOS() != tok.EOS() || tok2.BOS() != tok.BOS() {
		mismatch(tokenizer2Dir, "%d tokens of %d per prompt, %s has %d of %d: both encoders must take the same ids",
			tok2.VocabSize(), tok2.MaxLength(), tokenizerDir, tok.VocabSize(), tok.MaxLength())
	} else {
		// without "!": tokenizer_2 makes its pad token a special token
		probe := "a photo of an astronaut riding a horse on mars, highly detailed, 8k"
		a, b := tok.Encode(probe), tok2.Encode(probe)
		n := slices.Index(a, tok.EOS()) + 1
		if !slices.Equal(a[:n], b[:n]) {
			mismatch(tokenizer2Dir, "tokenizes text differently from %s (only the padding may differ)", tokenizerDir)
		}
	}
	if te := xl.te; te != nil {
		if n := te.VocabSize(); n > 0 && n < tok2.VocabSize() {
			mismatch(textEncoder2+"/"+modelFile, "token embedding has %d rows, fewer than the %d tokens of %s/vocab.json", n, tok2.VocabSize(), tokenizer2Dir)
		}
		if seq := te.SequenceLength(); seq > 0 && seq != tok2.MaxLength() {
			mismatch(textEncoder2+"/"+modelFile, "input_ids has a fixed length of %d tokens, the tokenizer gives %d", seq, tok2.MaxLength())
		}
		if w := te.PooledWidth(); w > 0 && xl.projDim > 0 && w != xl.projDim {
			mismatch(textEncoder2+"/"+modelFile, "text_embeds is %d wide, %s/%s says projection_dim %d", w, textEncoder2, configFile, xl.projDim)
		}
	}
	if un == nil {
		return
	}
	unetFile := UNet.String() + "/" + modelFile
	if !un.HasAdded() {
		mismatch(unetFile, "the UNet takes no text_embeds and time_ids, but the folder is SDXL (it has %s)", textEncoder2)
		return
	}
	if n := un.TimeIDsDim(); n != sdxlTimeIDs {
		in.fail(unetFile, &problem{
			msg: fmt.Sprintf("time_ids has %d values, want %d (original size, crop, target size); the refiner's aesthetic-score conditioning is not supported", n, sdxlTimeIDs),
			err: ErrUnsupported})
	}
	if xl.te != nil {
		w := cmpOrInt(xl.te.PooledWidth(), xl.projDim)
		if w > 0 && w != un.PooledDim() {
			mismatch(unetFile, "text_embeds is %d wide, %s gives pooled embeddings of %d", un.PooledDim(), textEncoder2, w)
		}
	}
}

func cmpOrInt(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// xlHidden returns the width of the concatenated hidden states of an SDXL
// folder's two encoders, or 0 when either leaves it dynamic.
func xlHidden(te1 *textenc.Signature, xl *xlLayout) int {
	if te1 == nil || xl == nil || xl.te == nil || te1.HiddenSize() == 0 || xl.te.HiddenSize() == 0 {
		return 0
	}
	return te1.HiddenSize() + xl.te.HiddenSize()
}

// xlEncoder is SDXL's text encoding as the engine takes it: both encoders
// on the same prompt, their penultimate hidden states concatenated along
// the hidden axis (first encoder first), and the second encoder's pooled
// text_embeds.
type xlEncoder struct {
	te1, te2  *textenc.Model
	eos, pad2 int32 // the ids tokenizer_2 pads with after the first EOS
}

func newXLEncoder(te1, te2 *textenc.Model, tok2 *tokenizer.CLIP) *xlEncoder {
	return &xlEncoder{te1: te1, te2: te2, eos: tok2.EOS(), pad2: tok2.Pad()}
}

// Encode returns the concatenated hidden states.
func (e *xlEncoder) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	h, _, err := e.EncodePooled(ctx, ids, nil, batch)
	return h, err
}

// EncodePooled returns the concatenated hidden states [batch, seq, h1+h2]
// and the pooled embeddings [batch, width]. ids are the first tokenizer's
// (padded with EOS), ids2 tokenizer_2's. When ids2 is nil the second
// encoder gets ids padded as tokenizer_2 pads, every id after a row's
// first EOS its pad id, as AUTOMATIC1111 repads them (tokenizer_2 also
// makes its pad token "!" a special token in the text, which
// AUTOMATIC1111's OpenCLIP tokenizer does not).
func (e *xlEncoder) EncodePooled(ctx context.Context, ids, ids2 []int32, batch int) (hidden, pooled *tensor.Dense, err error) {
	if ids2 == nil {
		ids2 = e.repad(ids, batch)
	} else if len(ids2) != len(ids) {
		return nil, nil, fmt.Errorf("sd: %d ids for text_encoder_2, %d for text_encoder", len(ids2), len(ids))
	}
	h1, err := e.te1.Encode(ctx, ids, batch)
	if err != nil {
		return nil, nil, err
	}
	h2, pooled, err := e.te2.EncodePooled(ctx, ids2, batch)
	if err != nil {
		return nil, nil, err
	}
	s1, s2 := h1.Shape(), h2.Shape()
	if s1[0] != s2[0] || s1[1] != s2[1] {
		return nil, nil, fmt.Errorf("sd: text encoders returned %v and %v", s1, s2)
	}
	b, seq, w1, w2 := s1[0], s1[1], s1[2], s2[2]
	d1, d2 := h1.Data().([]float32), h2.Data().([]float32)
	out := make([]float32, 0, b*seq*(w1+w2))
	for t := range b * seq {
		out = append(out, d1[t*w1:(t+1)*w1]...)
		out = append(out, d2[t*w2:(t+1)*w2]...)
	}
	return tensor.New(tensor.WithShape(b, seq, w1+w2), tensor.WithBacking(out)), pooled, nil
}

// HiddenParts returns the widths of the two encoders' hidden states, or
// nil when a model leaves its width dynamic.
func (e *xlEncoder) HiddenParts() []int {
	if e.te1.HiddenSize() == 0 || e.te2.HiddenSize() == 0 {
		return nil
	}
	return []int{e.te1.HiddenSize(), e.te2.HiddenSize()}
}

// repad returns ids with every id after each row's first EOS set to pad2.
func (e *xlEncoder) repad(ids []int32, batch int) []int32 {
	if e.pad2 == e.eos || batch <= 0 || len(ids)%batch != 0 {
		return ids
	}
	out := slices.Clone(ids)
	seq := len(ids) / batch
	for r := range batch {
		row := out[r*seq : (r+1)*seq]
		if i := slices.Index(row, e.eos); i >= 0 {
			for k := i + 1; k < len(row); k++ {
				row[k] = e.pad2
			}
		}
	}
	return out
}

// readForceUpcast reads force_upcast from vae_decoder/config.json (or
// vae/config.json): the VAE overflows in float16 (SDXL's does), so
// diffusers decodes in float32.
func (in *inspector) readForceUpcast() bool {
	for _, file := range []string{"vae_decoder/" + configFile, "vae/" + configFile} {
		var c struct {
			ForceUpcast *bool `json:"force_upcast"`
		}
		if err := readJSON(in.path(file), &c); err == nil && c.ForceUpcast != nil {
			return *c.ForceUpcast
		}
	}
	return false
}

// upcastDecoder returns the signature of a float32 copy of a float16 VAE
// decoder whose config says force_upcast (see rewrite.Upcast), or sig
// itself when it is not float16 or cannot be widened (said in the log).
func upcastDecoder(sig *vae.DecoderSignature, o session.Options, log *slog.Logger) *vae.DecoderSignature {
	io, err := onnxpb.ReadIO(sig.Path())
	if err != nil || len(io.Inputs) == 0 || io.Inputs[0].ElemType != onnxpb.Float16 {
		return sig
	}
	p, err := rewrite.Upcast(sig.Path(), o.RewriteCache)
	if err == nil {
		var up *vae.DecoderSignature
		if up, err = vae.ReadDecoderSignature(p); err == nil {
			log.Info("sd: float16 VAE decoder runs in float32 (force_upcast)", "path", p)
			return up
		}
	}
	log.Warn("sd: float16 VAE decoder with force_upcast could not be widened to float32; it may give NaN", "error", err)
	return sig
}

// loadXL loads SDXL's text_encoder_2, placed as the first text encoder
// (WithDevice(TextEncoder, ...) and its session options); the load report
// counts its time and rewrites as the text encoder's.
func (f *Folder) loadXL(ctx context.Context, lay *layout, cfg *loadConfig) error {
	xl := lay.xl
	f.Tokenizer2, f.zeroEmpty = xl.tok, xl.zeroEmpty
	o := cfg.sessionOptions(TextEncoder)
	start := time.Now()
	m, err := cfg.openTextEncoder(ctx, xl.te, o)
	if _, ok := errors.AsType[*ort.ProviderError](err); ok && cfg.auto(TextEncoder) {
		cfg.logger.Warn("sd: GPU unavailable, running on the CPU", "component", textEncoder2, "error", err)
		o.Device, o.ProviderOptions = session.CPU, nil
		m, err = cfg.openTextEncoder(ctx, xl.te, o)
	}
	if err != nil {
		err = openError(lay.dir, TextEncoder, o.Device, err)
		if fe, ok := errors.AsType[*FolderError](err); ok {
			fe.File = textEncoder2 + "/" + modelFile
		}
		return err
	}
	f.TextEncoder2 = m
	d := time.Since(start)
	if st, err := onnxpb.ReadStructure(m.Loaded.File); err == nil {
		f.sigMu.Lock()
		f.te2Sig = analyze(st)
		f.sigMu.Unlock()
	} else {
		cfg.logger.Warn("sd: no memory estimate for a component", "component", textEncoder2, "error", err)
	}
	cfg.logger.Info("sd: loaded", "component", textEncoder2, "path", m.Loaded.File, "device", string(o.Device), "duration", d)
	f.load.mu.Lock()
	defer f.load.mu.Unlock()
	if f.load.r.Open == nil {
		f.load.r.Open = make(map[Component]time.Duration)
	}
	f.load.r.Open[TextEncoder] += d
	if r := m.Loaded.Rewrites; r != "" {
		// the second encoder's rewrites are reported even when the
		// first one had none to report
		if f.load.r.Rewrites == nil {
			f.load.r.Rewrites = make(map[Component]string)
		}
		r = textEncoder2 + ": " + r
		if prev := f.load.r.Rewrites[TextEncoder]; prev != "" {
			r = prev + "; " + r
		}
		f.load.r.Rewrites[TextEncoder] = r
	}
	return nil
}
