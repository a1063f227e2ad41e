package sd_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/sd"
)

// xlReference returns the tiny SDXL model folder and its recorded runs, or
// skips when ../shared is absent.
func xlReference(t *testing.T) (string, []testenv.TinySDXLCase) {
	t.Helper()
	ref := testenv.LoadTinySDXLReference(t)
	return shareddir.File(t, "reference/tiny-sdxl/model"), ref.Runs
}

// xlTolerance is the parity asked of every quantity against diffusers'
// onnxruntime run (ONNX Runtime 1.30 there, this project's version here).
const xlTolerance = 1e-4

// TestXLReference runs both recorded SDXL runs through sd.Open and
// compares the text embeddings the UNet gets, every step's latents and the
// image with diffusers', injecting the recorded initial latents: with a
// negative prompt (64×64) and without one (96×64, where
// force_zeros_for_empty_prompt makes the negative embeddings zeros).
func TestXLReference(t *testing.T) {
	testenv.RequireORT(t)
	dir, runs := xlReference(t)
	m, err := sd.Open(t.Context(), dir, sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, run := range runs {
		for _, literal := range []bool{true, false} { // diffusers' tokenizing, and A1111's syntax (the same ids here)
			t.Run(fmt.Sprintf("%s/literal=%v", run.Case, literal), func(t *testing.T) {
				c, want := run.Call, run.Results.ORT
				req := sd.Request{Prompt: c.Prompt, LiteralPrompt: literal, Width: c.Width, Height: c.Height, Steps: c.Steps,
					GuidanceScale: new(c.Guidance), Latents: run.InitialLatents}
				if c.NegativePrompt != nil {
					req.NegativePrompt = *c.NegativePrompt
				}
				var emb, lat, ts []float64
				step := 0
				req.OnStep = func(s sd.Step) {
					if step == 0 {
						emb = append(emb, testenv.MaxAbsDiff(s.TextEmbeddings.Data().([]float32), want.EncoderHiddenStates))
					}
					if step < len(want.Steps) {
						lat = append(lat, testenv.MaxAbsDiff(s.Latents.Data().([]float32), want.Steps[step].LatentsAfter))
						ts = append(ts, s.Timestep-want.Steps[step].T)
					}
					step++
				}
				res, err := m.Generate(t.Context(), req)
				if err != nil {
					t.Fatal(err)
				}
				if step != len(want.Steps) {
					t.Fatalf("%d steps, reference has %d", step, len(want.Steps))
				}
				if slices.ContainsFunc(ts, func(d float64) bool { return d != 0 }) {
					t.Errorf("timesteps differ from the reference's %v by %v", want.Timesteps, ts)
				}
				if emb[0] > xlTolerance {
					t.Errorf("encoder_hidden_states differ by %g", emb[0])
				}
				worst := slices.Max(lat)
				if worst > xlTolerance {
					t.Errorf("latents differ by up to %g (per step %v)", worst, lat)
				}
				img := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), want.Image)
				if img > xlTolerance {
					t.Errorf("image differs by %g", img)
				}
				t.Logf("max abs error: encoder_hidden_states %.3g, latents %.3g (worst step), image %.3g", emb[0], worst, img)
			})
		}
	}
}

// TestXLTextEmbeddings checks the engine's SDXL text encoding against the
// recorded one: the tokenizers' ids (tokenizer_2 pads with "!"), the
// concatenated penultimate hidden states and the pooled text_embeds of
// both prompts, and the zeros of an absent negative prompt.
func TestXLTextEmbeddings(t *testing.T) {
	testenv.RequireORT(t)
	dir, runs := xlReference(t)
	f, err := sd.OpenFolder(t.Context(), dir, sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Tokenizer2 == nil || f.TextEncoder2 == nil {
		t.Fatal("no tokenizer_2 or text_encoder_2")
	}
	if f.ScalingFactor != 0.13025 {
		t.Errorf("ScalingFactor = %v, want vae_decoder/config.json's 0.13025", f.ScalingFactor)
	}
	if f.TextEncoder.Output() != "hidden_states.4" || f.TextEncoder2.Output() != "hidden_states.2" {
		t.Errorf("hidden states %s and %s, want the penultimate hidden_states.4 and hidden_states.2", f.TextEncoder.Output(), f.TextEncoder2.Output())
	}
	c := f.Components()
	if !c.Added || !c.ZeroEmptyNegative {
		t.Errorf("Components: Added %v, ZeroEmptyNegative %v; want both", c.Added, c.ZeroEmptyNegative)
	}
	enc := c.TextEncoder.(pipeline.PooledEncoder)
	for _, run := range runs {
		want := run.Results.ORT
		for _, role := range []struct {
			name           string
			hidden, pooled []float32
		}{{"prompt", want.PromptEmbeds, want.PooledPromptEmbeds}, {"negative_prompt", want.NegativePromptEmbeds, want.NegativePooledPromptEmbeds}} {
			ids := run.TextInputIDs[role.name]
			if ids == nil {
				if role.name == "negative_prompt" && (slices.ContainsFunc(want.NegativePromptEmbeds, func(v float32) bool { return v != 0 }) || len(want.NegativePromptEmbeds) == 0) {
					t.Errorf("%s: the reference's negative embeddings without a negative prompt are not zeros", run.Case)
				}
				continue
			}
			text := run.Call.Prompt
			if role.name == "negative_prompt" {
				text = *run.Call.NegativePrompt
			}
			if got := f.Tokenizer.Encode(text); !slices.Equal(got, ids.Tokenizer) {
				t.Errorf("%s %s: tokenizer ids %v, want %v", run.Case, role.name, got, ids.Tokenizer)
			}
			if got := f.Tokenizer2.Encode(text); !slices.Equal(got, ids.Tokenizer2) {
				t.Errorf("%s %s: tokenizer_2 ids %v, want %v", run.Case, role.name, got, ids.Tokenizer2)
			}
			h, p, err := enc.EncodePooled(t.Context(), ids.Tokenizer, ids.Tokenizer2, 1)
			if err != nil {
				t.Fatal(err)
			}
			dh, dp := testenv.MaxAbsDiff(h.Data().([]float32), role.hidden), testenv.MaxAbsDiff(p.Data().([]float32), role.pooled)
			if dh > xlTolerance || dp > xlTolerance {
				t.Errorf("%s %s: prompt embeds differ by %g, pooled by %g", run.Case, role.name, dh, dp)
			}
			t.Logf("%s %s: max abs error prompt_embeds %.3g, pooled %.3g", run.Case, role.name, dh, dp)
		}
	}
}
