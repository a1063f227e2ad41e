// Command sdgen generates Stable-Diffusion-architecture ONNX model folders
// with deterministic random weights (diffusers ONNX layout), and inspects
// model folders.
//
//	go run ./cmd/sdgen -config tiny -out /tmp/m      # a few MB, for tests
//	go run ./cmd/sdgen -config sd15 -out /tmp/sd15   # SD 1.5 size, ~5 GB
//	go run ./cmd/sdgen -inspect /tmp/m               # each component's inputs and outputs
//
// Variant flags: -ids int32|int64, -timestep float32|float16|int64,
// -timestep-shape batch|one|scalar, -fp16, -latent-parameters,
// -external weights.pb|model.onnx_data, -batch N, -attention
// efficient|baddbmm, -seed N.
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
	var (
		config    = fs.String("config", "tiny", "architecture: tiny or sd15")
		out       = fs.String("out", "", "output folder to generate")
		inspect   = fs.String("inspect", "", "model folder (or .onnx file) whose inputs and outputs to print")
		ids       = fs.String("ids", "int32", "text encoder input_ids type: int32 or int64")
		timestep  = fs.String("timestep", "", "UNet timestep type: float32, float16 or int64 (default float32, float16 with -fp16)")
		tsShape   = fs.String("timestep-shape", "batch", "UNet timestep shape: batch ([batch]), one ([1]) or scalar ([])")
		fp16      = fs.Bool("fp16", false, "float16 weights, inputs and outputs")
		latParams = fs.Bool("latent-parameters", false, "VAE encoder outputs latent_parameters (mean ‖ logvar) instead of latent_sample")
		external  = fs.String("external", onnxpb.LegacyExternalFile, "UNet external data file name (weights.pb or model.onnx_data)")
		batch     = fs.Int("batch", 0, "fixed batch size (0 = symbolic)")
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
	cfg, err := modelgen.ConfigByName(*config)
	if err != nil {
		return err
	}
	opt := modelgen.Options{Seed: *seed, FP16: *fp16, LatentParameters: *latParams, ExternalFile: *external, Batch: *batch}
	if opt.IDs, err = parseType(*ids, "int32", "int64"); err != nil {
		return fmt.Errorf("-ids: %w", err)
	}
	if *timestep != "" {
		if opt.Timestep, err = parseType(*timestep, "float32", "float16", "int64"); err != nil {
			return fmt.Errorf("-timestep: %w", err)
		}
	}
	switch *tsShape {
	case "batch":
		opt.TimestepShape = modelgen.TimestepBatch
	case "one":
		opt.TimestepShape = modelgen.TimestepOne
	case "scalar":
		opt.TimestepShape = modelgen.TimestepScalar
	default:
		return fmt.Errorf("-timestep-shape: %q is not batch, one or scalar", *tsShape)
	}
	switch *attention {
	case "efficient":
		opt.Attention = modelgen.Efficient
	case "baddbmm":
		opt.Attention = modelgen.Baddbmm
	default:
		return fmt.Errorf("-attention: %q is not efficient or baddbmm", *attention)
	}
	start := time.Now()
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
	for _, c := range []string{modelgen.TextEncoderDir, modelgen.UNetDir, modelgen.VAEDecoderDir, modelgen.VAEEncoderDir, "safety_checker"} {
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
