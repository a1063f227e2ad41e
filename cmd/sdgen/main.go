// Command sdgen generates Stable-Diffusion-architecture ONNX model folders
// with deterministic random weights (diffusers ONNX layouts), and inspects
// model folders.
//
//	go run ./cmd/sdgen -config tiny -out /tmp/m        # a few MB, for tests
//	go run ./cmd/sdgen -config sd15 -out /tmp/sd15     # SD 1.5 size, ~5 GB
//	go run ./cmd/sdgen -config sdxl -out /tmp/sdxl     # SDXL base size, ~14 GB (optimum layout)
//	go run ./cmd/sdgen -config taesd -out /tmp/taesd   # TAESD: vae_encoder/ and vae_decoder/
//	go run ./cmd/sdgen -inspect /tmp/m                 # each component's inputs and outputs
//
// Configurations (-config): tiny, sd15, tiny-inpaint, sd15-inpaint,
// tiny-sd2, sd21, tiny-sdxl, sdxl, tiny-lcm, lcm-sd15, tiny-taesd, taesd;
// the full-size ones have the real models' parameter counts.
//
// Variant flags: -layout auto|legacy|optimum, -ids int32|int64 (text
// encoder), -ids2 int32|int64 (SDXL's text_encoder_2), -hidden-states,
// -timestep float32|float16|int64, -timestep-shape batch|one|scalar, -fp16,
// -latent-parameters, -external weights.pb|model.onnx_data, -batch N,
// -channels-dim, -attention efficient|baddbmm, -seed N.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sdgen:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("sdgen", flag.ContinueOnError)
	names := append(modelgen.ConfigNames(), "tiny-taesd", "taesd")
	var (
		config    = fs.String("config", "tiny", "architecture: "+strings.Join(names, ", "))
		out       = fs.String("out", "", "output folder to generate")
		inspect   = fs.String("inspect", "", "model folder (or .onnx file) whose inputs and outputs to print")
		layout    = fs.String("layout", "auto", "export convention: auto (optimum for SDXL and LCM, else legacy), legacy or optimum")
		ids       = fs.String("ids", "int32", "text encoder input_ids type: int32 or int64")
		ids2      = fs.String("ids2", "int64", "text_encoder_2 input_ids type (SDXL): int32 or int64")
		hidden    = fs.Bool("hidden-states", false, "text encoders also output hidden_states.0 … hidden_states.L (always in the optimum layout)")
		timestep  = fs.String("timestep", "", "UNet timestep type: float32, float16 or int64 (default: float32, float16 with -fp16; int64 in the optimum layout)")
		tsShape   = fs.String("timestep-shape", "batch", "UNet timestep shape: batch ([batch], [steps] in the optimum layout), one ([1]) or scalar ([])")
		fp16      = fs.Bool("fp16", false, "float16 weights, inputs and outputs")
		latParams = fs.Bool("latent-parameters", false, "VAE encoder outputs latent_parameters (mean ‖ logvar) instead of latent_sample (always in the optimum layout)")
		external  = fs.String("external", "", "external data file name (default weights.pb for the legacy UNet; model.onnx_data, only for components over 2 GB, in the optimum layout; naming one moves SDXL's UNet and text_encoder_2 there)")
		batch     = fs.Int("batch", 0, "fixed batch size (0 = symbolic)")
		chanDim   = fs.Bool("channels-dim", false, "write the channel dim of the UNet's sample and the VAEs' inputs as the symbolic \"channels\", as diffusers' legacy exporter does")
		attention = fs.String("attention", "efficient", "attention form: efficient or baddbmm")
		seed      = fs.Uint64("seed", 0, "weight seed")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *inspect != "" {
		return inspectPath(stdout, *inspect)
	}
	if *out == "" {
		fs.Usage()
		return errors.New("-out or -inspect is required")
	}
	opt := modelgen.Options{Seed: *seed, FP16: *fp16, LatentParameters: *latParams, ExternalFile: *external, Batch: *batch, HiddenStates: *hidden, ChannelsDim: *chanDim}
	var err error
	if opt.IDs, err = parseType(*ids, "int32", "int64"); err != nil {
		return fmt.Errorf("-ids: %w", err)
	}
	if opt.IDs2, err = parseType(*ids2, "int32", "int64"); err != nil {
		return fmt.Errorf("-ids2: %w", err)
	}
	if *timestep != "" {
		if opt.Timestep, err = parseType(*timestep, "float32", "float16", "int64"); err != nil {
			return fmt.Errorf("-timestep: %w", err)
		}
	}
	if opt.Layout, err = modelgen.ParseLayout(*layout); err != nil {
		return fmt.Errorf("-layout: %w", err)
	}
	if opt.TimestepShape, err = modelgen.ParseTimestepShape(*tsShape); err != nil {
		return fmt.Errorf("-timestep-shape: %w", err)
	}
	if opt.Attention, err = modelgen.ParseAttention(*attention); err != nil {
		return fmt.Errorf("-attention: %w", err)
	}
	start := time.Now()
	if strings.HasSuffix(*config, "taesd") {
		tc, err := modelgen.TAESDConfigByName(*config)
		if err != nil {
			return err
		}
		if err := modelgen.WriteTAESD(*out, tc, opt); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s model to %s in %v\n", tc.Name, *out, time.Since(start).Round(time.Millisecond))
		return nil
	}
	cfg, err := modelgen.ConfigByName(*config)
	if err != nil {
		return err
	}
	if err := modelgen.Write(*out, cfg, opt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s model to %s in %v\n", cfg.Name, *out, time.Since(start).Round(time.Millisecond))
	return nil
}

func parseType(s string, allowed ...string) (onnxpb.DataType, error) {
	types := map[string]onnxpb.DataType{"int32": onnxpb.Int32, "int64": onnxpb.Int64, "float32": onnxpb.Float, "float16": onnxpb.Float16}
	for _, a := range allowed {
		if s == a {
			return types[s], nil
		}
	}
	return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(allowed, ", "))
}

// inspectPath prints the inputs and outputs of a model file, or of every
// component of a model folder.
func inspectPath(w io.Writer, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return inspectModel(w, path, filepath.Base(path))
	}
	found := false
	for _, c := range []string{modelgen.TextEncoderDir, modelgen.TextEncoder2Dir, modelgen.UNetDir, modelgen.VAEDecoderDir, modelgen.VAEEncoderDir, "safety_checker"} {
		p := filepath.Join(path, c, modelgen.ModelFile)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		found = true
		if err := inspectModel(w, p, c); err != nil {
			return err
		}
	}
	if !found {
		return fmt.Errorf("%s: no */model.onnx component found", path)
	}
	return nil
}

func inspectModel(w io.Writer, path, label string) error {
	m, err := onnxpb.ReadIO(path)
	if err != nil {
		return err
	}
	var size int64
	for _, in := range m.Initializers {
		size += in.NumBytes()
	}
	fmt.Fprintf(w, "%s: opset %d, %d initializers (%.1f MB)", label, m.Opsets[""], len(m.Initializers), float64(size)/1e6)
	if files := m.ExternalFiles(); len(files) > 0 {
		fmt.Fprintf(w, ", external data %s", strings.Join(files, ", "))
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(filepath.Dir(path), f)); err != nil {
				fmt.Fprintf(w, " (MISSING: %v)", err)
			}
		}
	}
	fmt.Fprintln(w)
	for _, v := range m.Inputs {
		fmt.Fprintf(w, "  in  %-22s %s\n", v.Name, v.ShapeString())
	}
	for _, v := range m.Outputs {
		fmt.Fprintf(w, "  out %-22s %s\n", v.Name, v.ShapeString())
	}
	return nil
}
