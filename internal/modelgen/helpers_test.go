package modelgen

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// graphs are the graphs of one model as the Build functions make them;
// text2 is nil where the config has no second text encoder.
type graphs struct {
	text, text2, unet, vaeDec, vaeEnc *onnxpb.Model
}

// buildAll builds every graph of cfg with opt (the text encoders with vocab
// tokens, 0 for the config's), failing the test on the first error.
func buildAll(t *testing.T, cfg Config, opt Options, vocab int) graphs {
	t.Helper()
	var g graphs
	var err error
	fail := func(what string) {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	g.text, err = BuildTextEncoder(cfg, opt, vocab)
	fail("text encoder")
	if cfg.Text2 != nil {
		g.text2, err = BuildTextEncoder2(cfg, opt, vocab)
		fail("text encoder 2")
	}
	g.unet, err = BuildUNet(cfg, opt)
	fail("unet")
	g.vaeDec, err = BuildVAEDecoder(cfg, opt)
	fail("vae decoder")
	g.vaeEnc, err = BuildVAEEncoder(cfg, opt)
	fail("vae encoder")
	return g
}

// readSDXLConfig parses the config.json files of an SDXL model folder: the
// text encoders', the UNet's and the VAE's from vaeDir (VAEEncoderDir or
// VAEDecoderDir).
func readSDXLConfig(t *testing.T, dir, vaeDir string) (text, text2 TextConfig, un UNetConfig, vae VAEConfig) {
	t.Helper()
	read := func(c string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, c, ConfigFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var err error
	fail := func() {
		if err != nil {
			t.Fatal(err)
		}
	}
	text, err = ParseTextConfig(read(TextEncoderDir), false)
	fail()
	text2, err = ParseTextConfig(read(TextEncoder2Dir), true)
	fail()
	un, err = ParseUNetConfig(read(UNetDir))
	fail()
	vae, err = ParseVAEConfig(read(vaeDir))
	fail()
	return text, text2, un, vae
}

// ioInfos converts ONNX value infos to ONNX Runtime's, a symbolic or unknown
// dimension as -1.
func ioInfos(vs []onnxpb.ValueInfo) []ort.IOInfo {
	var out []ort.IOInfo
	for _, v := range vs {
		info := ort.IOInfo{Name: v.Name, DType: ort.DType(v.ElemType)}
		for _, d := range v.Dims {
			if d.Param != "" || d.Value <= 0 {
				info.Shape = append(info.Shape, -1)
			} else {
				info.Shape = append(info.Shape, d.Value)
			}
		}
		out = append(out, info)
	}
	return out
}

// testSessionOptions are the options the tests open their sessions with.
var testSessionOptions = ort.Options{IntraOpThreads: 1, InterOpThreads: 1}
