package models

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/sd"
)

// TestClassifierOnTrainingLikeImages checks the measure the quality test
// uses: on clean renders of every shape, colour pair, size and position of
// the training data it must be right.
func TestClassifierOnTrainingLikeImages(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n, wrong := 0, 0
	for range 3 {
		for _, s := range shapeNames {
			for ci, c := range palette {
				bi := (ci + 1 + r.IntN(len(palette)-1)) % len(palette)
				rad := 7 + r.Float64()*17
				cx := math.Max(rad+1, math.Min(64-rad-1, 12+r.Float64()*40))
				cy := math.Max(rad+1, math.Min(64-rad-1, 12+r.Float64()*40))
				got := classify(render(s, c.rgb, palette[bi].rgb, cx, cy, rad))
				want := verdict{color: c.name, shape: s, bg: palette[bi].name}
				n++
				if got != want {
					wrong++
					t.Logf("%s %s on %s (r=%.1f at %.0f,%.0f): classified as %+v", c.name, s, palette[bi].name, rad, cx, cy, got)
				}
			}
		}
	}
	if wrong > 0 {
		t.Errorf("classifier wrong on %d of %d clean renders", wrong, n)
	}
}

// qualityGrid is the number of prompts TestQuality judges per scheduler and
// guidance scale: 50 is every colour with every shape once.
const qualityGrid = 50

// qualityPrompts is the fixed grid of n prompts:
// colour i mod 10 and shape (i + i/10) mod 5, so that the first 50 hold
// every colour with every shape once, each on a background of another
// colour.
func qualityPrompts(n int) []verdict {
	var vs []verdict
	for i := range n {
		vs = append(vs, verdict{
			color: palette[i%len(palette)].name,
			shape: shapeNames[(i+i/10)%len(shapeNames)],
			bg:    palette[(3*i+5)%len(palette)].name,
		})
	}
	return vs
}

type accuracy struct{ color, bg, shape, all float64 }

func (a accuracy) String() string {
	return fmt.Sprintf("colour %3.0f%%  background %3.0f%%  shape %3.0f%%  all three %3.0f%%", 100*a.color, 100*a.bg, 100*a.shape, 100*a.all)
}

// qualitySeed is the seed of the grid's first prompt; prompt i uses
// qualitySeed+i.
const qualitySeed = 100

// measure generates the grid of n prompts under one scheduler and guidance
// scale.
func measure(t *testing.T, p *pipeline.Pipeline, n int, sched string, guidance float64) accuracy {
	return measureSteps(t, p, n, sched, guidance, qualitySteps)
}

// qualitySteps is the steps of TestQuality's images.
const qualitySteps = 20

// measureSteps is measure with images of the given steps.
func measureSteps(t *testing.T, p *pipeline.Pipeline, n int, sched string, guidance float64, steps int) accuracy {
	a, _ := measureImages(t, p, n, qualitySeed, sched, guidance, steps)
	return a
}

// measureImages is measure with prompt i seeded seedBase+i, which also
// returns the images, framed green where they are right in all three and
// red where not.
func measureImages(t *testing.T, p *pipeline.Pipeline, n int, seedBase int64, sched string, guidance float64, steps int) (accuracy, []sheetCell) {
	t.Helper()
	want := qualityPrompts(n)
	got := make([]verdict, len(want))
	imgs := make([]sheetCell, len(want))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 3) // keep the three stages busy
	for i, w := range want {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res, err := p.Generate(t.Context(), pipeline.Request{
				Prompt: fmt.Sprintf("a %s %s on a %s background", w.color, w.shape, w.bg),
				Width:  64, Height: 64, Steps: steps, GuidanceScale: new(guidance),
				Scheduler: sched, Seed: seedBase + int64(i),
			})
			if err != nil {
				t.Error(err)
				return
			}
			img := res.Images[0].(*image.NRGBA)
			got[i] = classify(img)
			imgs[i].img = img
		})
	}
	wg.Wait()
	var a accuracy
	for i, w := range want {
		g := got[i]
		a.color += b2f(g.color == w.color)
		a.bg += b2f(g.bg == w.bg)
		a.shape += b2f(g.shape == w.shape)
		a.all += b2f(g == w)
		imgs[i].frame = frameWrong
		if g == w {
			imgs[i].frame = frameRight
		}
	}
	nf := float64(len(want))
	return accuracy{a.color / nf, a.bg / nf, a.shape / nf, a.all / nf}, imgs
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// TestQuality generates a fixed grid of prompts through the library's real
// pipeline on the committed model and judges the pictures. The targets: the
// shape's colour must match the prompt in at least 90% of images, the
// background in at least 90%, the shape class in at least 70%, under each
// of four schedulers at 20 steps and the model's guidance scale
// (its sdpipe.json); and the share of images right in all three must be at
// least 10 points higher with that guidance than with guidance off (1),
// averaged over the schedulers.
func TestQuality(t *testing.T) {
	p := openDefault(t)
	const (
		minColor, minBG, minShape = 0.9, 0.9, 0.7
		minGuidanceGain           = 0.10
	)
	var on, off float64
	scheds := []string{"PNDMScheduler", "Euler a", "DPM++ 2M", "DDIM"}
	for _, s := range scheds {
		g := measure(t, p, qualityGrid, s, defaultGuidance(t))
		u := measure(t, p, qualityGrid, s, 1)
		t.Logf("%-13s guidance %g: %v", s, defaultGuidance(t), g)
		t.Logf("%-13s guidance 1: %v", s, u)
		if g.color < minColor || g.bg < minBG || g.shape < minShape {
			t.Errorf("%s: %v; want colour >= %.0f%%, background >= %.0f%%, shape >= %.0f%%", s, g, 100*minColor, 100*minBG, 100*minShape)
		}
		on += g.all / float64(len(scheds))
		off += u.all / float64(len(scheds))
	}
	t.Logf("all three right: %.0f%% with guidance, %.0f%% without", 100*on, 100*off)
	if on-off < minGuidanceGain {
		t.Errorf("guidance gains %.0f points (%.0f%% vs %.0f%%), want at least %.0f", 100*(on-off), 100*on, 100*off, 100*minGuidanceGain)
	}
}

// sheetCell is one 64×64 image of a contact sheet and the colour of its
// frame.
type sheetCell struct {
	img   *image.NRGBA // nil leaves the cell blank
	frame color.NRGBA
}

// Frames of judged images: right in all three, or not.
var (
	frameRight = color.NRGBA{0, 170, 0, 255}
	frameWrong = color.NRGBA{200, 0, 0, 255}
)

// contactSheet lays the images out cols to a row at twice their size, each
// in a frame pad pixels wide.
func contactSheet(cells []sheetCell, cols, pad int) *image.NRGBA {
	const scale = 2
	cw := 64*scale + 2*pad
	rows := (len(cells) + cols - 1) / cols
	sheet := image.NewNRGBA(image.Rect(0, 0, cols*cw, rows*cw))
	for i, c := range cells {
		x0, y0 := (i%cols)*cw, (i/cols)*cw
		for y := range cw {
			for x := range cw {
				col := c.frame
				if x >= pad && y >= pad && x < cw-pad && y < cw-pad && c.img != nil {
					col = c.img.NRGBAAt((x-pad)/scale, (y-pad)/scale)
				}
				sheet.SetNRGBA(x0+x, y0+y, col)
			}
		}
	}
	return sheet
}

// modelUnderTest is the model folder that TestQualitySweep and
// TestVAERoundTrip measure: SDPIPE_QUALITY_DIR, else the embedded model.
func modelUnderTest(t *testing.T) string {
	if dir := os.Getenv("SDPIPE_QUALITY_DIR"); dir != "" {
		return dir
	}
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestQualitySweep measures a model folder (SDPIPE_QUALITY_DIR, default the
// embedded model) under every scheduler of TestQuality at the guidance
// scales listed in SDPIPE_QUALITY_SWEEP (e.g. "1,3,7.5"), on a grid of
// SDPIPE_QUALITY_N prompts (default 40) seeded from SDPIPE_QUALITY_SEED
// (default 100), and writes contact sheets of the images into
// SDPIPE_QUALITY_DUMP when it is set. It checks nothing: it is the tool
// for judging a newly trained model (training/README.md), and skips unless
// SDPIPE_QUALITY_SWEEP is set.
func TestQualitySweep(t *testing.T) {
	list := testenv.Measure(t, "SDPIPE_QUALITY_SWEEP", "a list of guidance scales to run it")
	var scales []float64
	for _, f := range strings.Split(list, ",") {
		g, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			t.Fatalf("SDPIPE_QUALITY_SWEEP: %v", err)
		}
		scales = append(scales, g)
	}
	n := testenv.EnvInt(t, "SDPIPE_QUALITY_N", 40, 1)
	seedBase := int64(qualitySeed)
	if v := os.Getenv("SDPIPE_QUALITY_SEED"); v != "" {
		var err error
		if seedBase, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("SDPIPE_QUALITY_SEED=%q: %v", v, err)
		}
	}
	testenv.RequireORT(t)
	p := openDir(t, modelUnderTest(t))
	for _, s := range []string{"PNDMScheduler", "Euler a", "DPM++ 2M", "DDIM"} {
		for _, g := range scales {
			a, imgs := measureImages(t, p, n, seedBase, s, g, qualitySteps)
			t.Logf("%-13s guidance %-4g %v", s, g, a)
			if dump := os.Getenv("SDPIPE_QUALITY_DUMP"); dump != "" {
				name := fmt.Sprintf("%s-%g.png", strings.ReplaceAll(s, " ", "_"), g)
				writePNG(t, filepath.Join(dump, name), contactSheet(imgs, 8, 3))
			}
		}
	}
}

// TestQualityInt8 measures TestQuality's grid (every scheduler, the
// model's guidance, the same prompts and seeds) with the UNet in int8
// (sd.WithInt8: calibrated on the model's example prompts, not on the
// grid) against float32, and fails when int8 loses more than 3 points of
// colour, background, shape or all-three accuracy on any scheduler. The
// grid is 100 prompts (SDPIPE_QUALITY_N), so that one image is one point;
// SDPIPE_QUALITY_INT8_TEXT=1 quantizes the text encoder too
// (sd.Int8.TextEncoder). It takes about 80 s on 2 cores; -short skips it.
func TestQualityInt8(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 800 images")
	}
	const maxLoss = 0.03
	n := testenv.EnvInt(t, "SDPIPE_QUALITY_N", 2*qualityGrid, 1) // one image is one point
	testenv.RequireORT(t)
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	fp32 := openDefault(t)
	var opts []sd.LoadOption
	for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder} {
		opts = append(opts, sd.WithThreads(c, 1))
	}
	q := sd.Int8{TextEncoder: os.Getenv("SDPIPE_QUALITY_INT8_TEXT") == "1"}
	f, err := sd.OpenFolder(t.Context(), dir, append(opts, sd.WithInt8(q), sd.WithRewriteCache(t.TempDir()), sd.WithoutVAEEncoder())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	t.Logf("UNet: %s; text encoder: %q", f.Load().Rewrites[sd.UNet], f.Load().Rewrites[sd.TextEncoder])
	int8, err := pipeline.New(f.Components(), pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { int8.Close() })
	g := defaultGuidance(t)
	for _, s := range []string{"PNDMScheduler", "Euler a", "DPM++ 2M", "DDIM"} {
		a := measure(t, fp32, n, s, g)
		b := measure(t, int8, n, s, g)
		t.Logf("%-13s float32: %v", s, a)
		t.Logf("%-13s int8:    %v", s, b)
		for _, c := range []struct {
			name   string
			fp, q8 float64
		}{{"colour", a.color, b.color}, {"background", a.bg, b.bg}, {"shape", a.shape, b.shape}, {"all three", a.all, b.all}} {
			if c.fp-c.q8 > maxLoss+1e-9 {
				t.Errorf("%s: int8 %s accuracy %.0f%%, float32 %.0f%%: more than %.0f points lost", s, c.name, 100*c.q8, 100*c.fp, 100*maxLoss)
			}
		}
	}
}
