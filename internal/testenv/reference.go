package testenv

import (
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// TinyReference is ../shared/reference/tiny-onnx-sd/reference.json: a run of
// diffusers' OnnxStableDiffusionPipeline on the tiny reference model.
type TinyReference struct {
	Call struct {
		Prompt        string  `json:"prompt"`
		Height        int     `json:"height"`
		Width         int     `json:"width"`
		Steps         int     `json:"num_inference_steps"`
		GuidanceScale float64 `json:"guidance_scale"`
		Eta           float64 `json:"eta"`
	} `json:"call"`
	InitialLatents []float32 `json:"initial_latents"`
	TextInputIDs   struct {
		Cond   []int32 `json:"cond"`
		Uncond []int32 `json:"uncond"`
	} `json:"text_input_ids"`
	ORT TinyRun `json:"-"`
}

// TinyRun is one backend's recorded run.
type TinyRun struct {
	TextEncoderCalls []struct {
		InputIDs        []int32   `json:"input_ids"`
		LastHiddenState []float32 `json:"last_hidden_state"`
		PoolerOutput    []float32 `json:"pooler_output"`
	} `json:"text_encoder_calls"`
	Timesteps []int `json:"timesteps"`
	Steps     []struct {
		I             int       `json:"i"`
		T             float64   `json:"t"`
		TimestepInput []float32 `json:"unet_timestep_input"`
		SampleInput   []float32 `json:"unet_sample_input"`
		NoisePred     []float32 `json:"noise_pred_uncond_text"`
		LatentsAfter  []float32 `json:"latents_after"`
	} `json:"steps"`
	VAEDecoderInput  []float32 `json:"vae_decoder_input"`
	VAEDecoderOutput []float32 `json:"vae_decoder_output"`
	Image            []float32 `json:"image"`
}

// LoadTinyReference reads reference.json, or skips the test when ../shared
// is absent.
func LoadTinyReference(t testing.TB) *TinyReference {
	t.Helper()
	return readTinyReference(t, filepath.Join(SharedDir(t), "reference", "tiny-onnx-sd", "reference.json"))
}

// TinyLoRAReference reads ../shared/reference/tiny-lora/reference-m<mult>.json
// (diffusers' run of the tiny model with the tiny LoRA at that multiplier,
// written as "1.0" or "0.5"), or skips the test when it is absent.
func TinyLoRAReference(t testing.TB, mult string) *TinyReference {
	t.Helper()
	return readTinyReference(t, shareddir.File(t, "reference/tiny-lora/reference-m"+mult+".json"))
}

// readTinyReference reads a run of diffusers' pipeline on a tiny model in
// the format of reference.json.
func readTinyReference(t testing.TB, path string) *TinyReference {
	t.Helper()
	var r TinyReference
	shareddir.ReadJSON(t, path, &r)
	var res struct {
		Results struct {
			ORT TinyRun `json:"onnxruntime"`
		} `json:"results"`
	}
	shareddir.ReadJSON(t, path, &res) // the same file: its onnxruntime run
	r.ORT = res.Results.ORT
	return &r
}

// RelRMS returns the root mean square of got - ref over that of ref, or
// +Inf when the lengths differ or either is empty.
func RelRMS(ref, got []float32) float64 {
	if len(ref) != len(got) || len(ref) == 0 {
		return math.Inf(1)
	}
	var num, den float64
	for i := range ref {
		d := float64(ref[i]) - float64(got[i])
		num += d * d
		den += float64(ref[i]) * float64(ref[i])
	}
	return math.Sqrt(num / den)
}

// MaxAbsDiff returns the largest |a[i]-b[i]|, or +Inf when the lengths
// differ or a value is NaN.
func MaxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	m := 0.0
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = math.Max(m, d)
	}
	return m
}

// TinyInpaint returns ../shared/reference/tiny-inpaint (its reference.json,
// its model/ folder) and the init image and mask of its reference run, or
// skips the test without ../shared.
func TinyInpaint(t testing.TB) (dir string, img, mask image.Image) {
	t.Helper()
	dir = filepath.Join(SharedDir(t), "reference", "tiny-inpaint")
	read := func(name string) image.Image {
		f, err := os.Open(filepath.Join(dir, "inputs", name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m, err := png.Decode(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return m
	}
	return dir, read("pndm_64_rect_mask_image.png"), read("pndm_64_rect_mask_mask.png")
}
