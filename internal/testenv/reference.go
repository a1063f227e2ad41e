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
	// VAEEncoderCheck is the PyTorch VAE encoder's posterior on the
	// check image (tiny-onnx-sd only).
	VAEEncoderCheck struct {
		Mean []float32 `json:"latent_mean"`
		Std  []float32 `json:"latent_std"`
	} `json:"vae_encoder_check"`
	ORT     TinyRun `json:"-"` // results.onnxruntime
	PyTorch TinyRun `json:"-"` // results.pytorch: the same run on the PyTorch modules
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
	var r struct {
		TinyReference
		Results struct {
			ORT     TinyRun `json:"onnxruntime"`
			PyTorch TinyRun `json:"pytorch"`
		} `json:"results"`
	}
	shareddir.ReadJSON(t, path, &r)
	r.ORT, r.PyTorch = r.Results.ORT, r.Results.PyTorch
	return &r.TinyReference
}

// TinySDXLReference is ../shared/reference/tiny-sdxl/reference.json: two
// runs of diffusers' StableDiffusionXLPipeline on the tiny SDXL model
// (tiny-sdxl/model), each on PyTorch and on ONNX Runtime.
type TinySDXLReference struct {
	// VAEEncoderCheck is the VAE encoder's latent_parameters for
	// np.random.RandomState(5).uniform(-1, 1, (1, 3, 64, 64)).
	VAEEncoderCheck struct {
		PyTorch []float32 `json:"latent_parameters_pytorch"`
	} `json:"vae_encoder_check"`
	Runs []TinySDXLCase `json:"runs"`
}

// TinySDXLCase is one run of TinySDXLReference: the call, its inputs and
// what each backend recorded.
type TinySDXLCase struct {
	Case string `json:"case"`
	Call struct {
		Prompt         string  `json:"prompt"`
		NegativePrompt *string `json:"negative_prompt"`
		Height         int     `json:"height"`
		Width          int     `json:"width"`
		Steps          int     `json:"num_inference_steps"`
		Guidance       float64 `json:"guidance_scale"`
	} `json:"call"`
	InitialLatents []float32 `json:"initial_latents"`
	// TextInputIDs holds, by role ("prompt", "negative_prompt"), the ids
	// of both tokenizers.
	TextInputIDs map[string]*struct {
		Tokenizer  []int32 `json:"tokenizer"`
		Tokenizer2 []int32 `json:"tokenizer_2"`
	} `json:"text_input_ids"`
	Results struct {
		ORT     TinySDXLRun `json:"onnxruntime"`
		PyTorch TinySDXLRun `json:"pytorch"`
	} `json:"results"`
}

// TinySDXLRun is one backend's record of a TinySDXLCase.
type TinySDXLRun struct {
	TextEncoderCalls []struct {
		Encoder                string    `json:"encoder"` // the component folder: text_encoder or text_encoder_2
		Role                   string    `json:"role"`
		InputIDs               []int64   `json:"input_ids"`
		LastHiddenState        []float32 `json:"last_hidden_state"`
		PenultimateHiddenState []float32 `json:"penultimate_hidden_state"`
		PoolerOutput           []float32 `json:"pooler_output"`
		TextEmbeds             []float32 `json:"text_embeds"`
	} `json:"text_encoder_calls"`
	PromptEmbeds               []float32   `json:"prompt_embeds"`
	NegativePromptEmbeds       []float32   `json:"negative_prompt_embeds"`
	PooledPromptEmbeds         []float32   `json:"pooled_prompt_embeds"`
	NegativePooledPromptEmbeds []float32   `json:"negative_pooled_prompt_embeds"`
	EncoderHiddenStates        []float32   `json:"encoder_hidden_states"`
	AddTextEmbeds              []float32   `json:"add_text_embeds"`
	AddTimeIDs                 [][]float32 `json:"add_time_ids"`
	Timesteps                  []float64   `json:"timesteps"`
	Steps                      []struct {
		T            float64   `json:"t"`
		SampleInput  []float32 `json:"unet_sample_input"`
		UNetOutput   []float32 `json:"unet_output"`
		LatentsAfter []float32 `json:"latents_after"`
	} `json:"steps"`
	SampleInputShape      []int64   `json:"unet_sample_input_shape"`
	VAEDecoderInput       []float32 `json:"vae_decoder_input"`
	VAEDecoderInputShape  []int64   `json:"vae_decoder_input_shape"`
	VAEDecoderOutput      []float32 `json:"vae_decoder_output"`
	VAEDecoderOutputShape []int64   `json:"vae_decoder_output_shape"`
	Image                 []float32 `json:"image"`
}

// LoadTinySDXLReference reads ../shared/reference/tiny-sdxl/reference.json,
// or skips the test when it is absent; it fails the test unless it holds
// its two runs.
func LoadTinySDXLReference(t testing.TB) *TinySDXLReference {
	t.Helper()
	var r TinySDXLReference
	path := shareddir.File(t, "reference/tiny-sdxl/reference.json")
	shareddir.ReadJSON(t, path, &r)
	if len(r.Runs) != 2 {
		t.Fatalf("%s: %d runs, want 2", path, len(r.Runs))
	}
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

// TinyInpaintReference is ../shared/reference/tiny-inpaint/reference.json: a
// run of diffusers' OnnxStableDiffusionInpaintPipeline on the tiny
// inpainting model, on ONNX Runtime and on PyTorch.
type TinyInpaintReference struct {
	Call struct {
		Prompt        string  `json:"prompt"`
		Height        int     `json:"height"`
		Width         int     `json:"width"`
		Steps         int     `json:"num_inference_steps"`
		GuidanceScale float64 `json:"guidance_scale"`
	} `json:"call"`
	InitialLatents []float32 `json:"initial_latents"`
	Results        struct {
		ORT     TinyInpaintRun `json:"onnxruntime"`
		PyTorch TinyInpaintRun `json:"pytorch"`
	} `json:"results"`
}

// TinyInpaintRun is one backend's record of the TinyInpaintReference run.
type TinyInpaintRun struct {
	TextEncoderCalls []struct {
		LastHiddenState []float32 `json:"last_hidden_state"`
	} `json:"text_encoder_calls"`
	VAEEncoderInput       []float32         `json:"vae_encoder_input"`
	VAEEncoderOutput      []float32         `json:"vae_encoder_output"`
	VAEEncoderOutputShape []int             `json:"vae_encoder_output_shape"`
	MaskLatent            []float32         `json:"mask_latent"`
	MaskedImageLatents    []float32         `json:"masked_image_latents"`
	Steps                 []TinyInpaintStep `json:"steps"`
	SampleInputShape      []int64           `json:"unet_sample_input_shape"`
	UNetOutputShape       []int64           `json:"unet_output_shape"`
	Image                 []float32         `json:"image"`
}

// TinyInpaintStep is one UNet call of a TinyInpaintRun.
type TinyInpaintStep struct {
	T             float64   `json:"t"`
	TimestepInput []float32 `json:"unet_timestep_input"`
	SampleInput   []float32 `json:"unet_sample_input"` // latents ‖ mask ‖ masked-image latents
	UNetOutput    []float32 `json:"unet_output"`
	LatentsAfter  []float32 `json:"latents_after"`
}

// LoadTinyInpaintReference reads tiny-inpaint's reference.json, or skips
// the test when it is absent.
func LoadTinyInpaintReference(t testing.TB) *TinyInpaintReference {
	t.Helper()
	var r TinyInpaintReference
	shareddir.ReadJSON(t, shareddir.File(t, "reference/tiny-inpaint/reference.json"), &r)
	return &r
}
