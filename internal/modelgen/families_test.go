package modelgen

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// feed returns inputs for a component's graph, read from its signature:
// batch 2, 77 tokens, 8×8 latents (64×64 images). time_ids are SDXL's
// (64, 64, 0, 0, 64, 64).
func feed(t *testing.T, s *ort.Session, component string, vocab int) []ort.Tensor {
	t.Helper()
	var in []ort.Tensor
	for _, info := range s.Inputs() {
		shape := make([]int64, len(info.Shape))
		for i, d := range info.Shape {
			shape[i] = d
			if d > 0 {
				continue
			}
			switch {
			case i == 0:
				shape[i] = 2
			case info.Name == "input_ids" || info.Name == "encoder_hidden_states":
				shape[i] = 77
			case component == VAEEncoderDir:
				shape[i] = 64
			default:
				shape[i] = 8
			}
		}
		if info.Name == "timestep" && len(shape) == 1 && info.Shape[0] < 0 {
			shape[0] = 1 // [steps]: one value, broadcast
		}
		n := ort.Elems(shape)
		var data any
		switch {
		case info.Name == "input_ids":
			row, _ := promptIDs(vocab, 5)
			ids := make([]int64, 0, n)
			for len(ids) < int(n) {
				for _, v := range row {
					ids = append(ids, int64(v))
				}
			}
			if info.DType == ort.Int32 {
				data = toInt32(ids)
			} else {
				data = ids
			}
		case info.Name == "timestep":
			switch info.DType {
			case ort.Int64:
				v := make([]int64, n)
				for i := range v {
					v[i] = 501
				}
				data = v
			default:
				v := make([]float32, n)
				for i := range v {
					v[i] = 501
				}
				data = v
			}
		case info.Name == "time_ids":
			v := make([]float32, 0, n)
			for range shape[0] {
				v = append(v, 64, 64, 0, 0, 64, 64)
			}
			data = v
		default:
			data = gauss(uint64(len(in)+1), int(n))
		}
		in = append(in, ort.Tensor{Shape: shape, Data: data})
	}
	return in
}

// TestFamiliesRun writes the tiny folder of every family and runs each of
// its components in ONNX Runtime on inputs read from the graphs'
// signatures, checking finite outputs of sane magnitude and the files and
// configs each family's loaders look for.
func TestFamiliesRun(t *testing.T) {
	testenv.RequireORT(t)
	vocab := GenerateVocabulary(0).Size()
	for _, tc := range []struct {
		cfg   Config
		opt   Options
		class string
		comps []string
	}{
		{TinySD2(), Options{}, "OnnxStableDiffusionPipeline", nil},
		{TinyInpaint(), Options{}, "OnnxStableDiffusionInpaintPipeline", nil},
		{TinyLCM(), Options{}, "LatentConsistencyModelPipeline", nil},
		{TinySDXL(), Options{}, "StableDiffusionXLPipeline", []string{TextEncoder2Dir}},
		{TinySDXL(), Options{FP16: true, Layout: Optimum, Timestep: onnxpb.Float, TimestepShape: TimestepScalar}, "StableDiffusionXLPipeline", []string{TextEncoder2Dir}},
		{TinySD2(), Options{Layout: Optimum}, "StableDiffusionPipeline", nil},
	} {
		t.Run(tc.cfg.Name+"/"+tc.opt.resolve(tc.cfg).Layout.String(), func(t *testing.T) {
			dir := t.TempDir()
			if err := Write(dir, tc.cfg, tc.opt); err != nil {
				t.Fatal(err)
			}
			var index map[string]any
			shareddir.ReadJSON(t, filepath.Join(dir, "model_index.json"), &index)
			if index["_class_name"] != tc.class {
				t.Errorf("model_index _class_name %v, want %s", index["_class_name"], tc.class)
			}
			var sched map[string]any
			shareddir.ReadJSON(t, filepath.Join(dir, SchedulerDir, "scheduler_config.json"), &sched)
			wantSched := tc.cfg.Scheduler.Class
			if wantSched == "" {
				wantSched = "PNDMScheduler"
			}
			if sched["_class_name"] != wantSched || (tc.cfg.Scheduler.Prediction != "" && sched["prediction_type"] != tc.cfg.Scheduler.Prediction) {
				t.Errorf("scheduler config %v", sched)
			}
			b, err := os.ReadFile(filepath.Join(dir, UNetDir, ConfigFile))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.cfg.UNet
			want.CrossDim = tc.cfg.crossDim()
			if u, err := ParseUNetConfig(b); err != nil || !cmp.Equal(u, want) {
				t.Errorf("unet/config.json reads back as %+v, %v", u, err)
			}
			for _, c := range append([]string{TextEncoderDir, UNetDir, VAEDecoderDir, VAEEncoderDir}, tc.comps...) {
				s := openComponent(t, dir, c)
				in := feed(t, s, c, vocab)
				out := make([]ort.Tensor, len(s.Outputs()))
				for i, o := range s.Outputs() {
					if o.DType == ort.Float16 {
						// float16 outputs need their shapes: the inputs' batch,
						// and what the component makes of them.
						out[i].Shape = fp16OutShape(c, o, in)
						if o.Name == "text_embeds" { // optimum names its dim sequence_length
							out[i].Shape[1] = int64(tc.cfg.Text2.ProjectionDim)
						}
					}
				}
				if err := s.Run(t.Context(), in, out); err != nil {
					t.Fatalf("%s: %v", c, err)
				}
				for i, o := range out {
					_, std := stats(t, c+" "+s.Outputs()[i].Name, o.Data.([]float32))
					if std == 0 || std > 100 {
						t.Errorf("%s %s: std %.3g", c, s.Outputs()[i].Name, std)
					}
				}
			}
		})
	}
}

// fp16OutShape returns the shape of a float16 output for the inputs feed
// makes.
func fp16OutShape(component string, o ort.IOInfo, in []ort.Tensor) []int64 {
	shape := append([]int64(nil), o.Shape...)
	for i := range shape {
		if shape[i] > 0 {
			continue
		}
		switch {
		case i == 0:
			shape[i] = in[0].Shape[0]
		case component == TextEncoderDir || component == TextEncoder2Dir:
			shape[i] = 77
		case component == VAEDecoderDir:
			shape[i] = 64
		default:
			shape[i] = 8
		}
	}
	return shape
}

// TestTAESDRuns writes the TAESD folders and runs both halves, 8× down and
// 8× up, checking finite outputs of sane magnitude (with random weights
// nothing bounds the decoder's output to [-1, 1]).
func TestTAESDRuns(t *testing.T) {
	testenv.RequireORT(t)
	for _, tc := range []TAESDConfig{TinyTAESD(), FullTAESD()} {
		t.Run(tc.Name, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteTAESD(dir, tc, Options{Seed: 2}); err != nil {
				t.Fatal(err)
			}
			var conf map[string]any
			shareddir.ReadJSON(t, filepath.Join(dir, VAEDecoderDir, ConfigFile), &conf)
			if conf["_class_name"] != "AutoencoderTiny" {
				t.Errorf("config %v", conf)
			}
			lat := run(t, openComponent(t, dir, VAEEncoderDir), []ort.Tensor{{Shape: []int64{1, 3, 64, 64}, Data: numpyUniform(1, -1, 1, 3*64*64)}}, []int64{1, 4, 8, 8})
			if _, std := stats(t, "taesd latents", lat[0]); std == 0 || std > 100 {
				t.Errorf("latent std %.3g", std)
			}
			img := run(t, openComponent(t, dir, VAEDecoderDir), []ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: gauss(3, 256)}}, []int64{1, 3, 64, 64})
			if _, std := stats(t, "taesd image", img[0]); std == 0 || std > 100 {
				t.Errorf("image std %.3g", std)
			}
		})
	}
}
