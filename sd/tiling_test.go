package sd

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"strings"
	"testing"
)

func pixelsOf(t *testing.T, r *Result) []byte {
	t.Helper()
	img, ok := r.Images[0].(*image.NRGBA)
	if !ok {
		t.Fatalf("image is a %T", r.Images[0])
	}
	return img.Pix
}

// TestTiledVAEAdmission: on a budget that the plain decode of a size
// exceeds but its tiled decode fits, the size, refused without tiling, is
// admitted and decoded tiled (the same image as forced tiling gives, not
// the untiled one); on a smaller budget in half tiles; a size that does
// not fit even tiled is refused with the tiled decode counted.
func TestTiledVAEAdmission(t *testing.T) {
	const size = 192 // 3×3 tiles of the default model's 64 pixels
	req := Request{Prompt: "a red circle", Steps: 2, Seed: 3, Width: size, Height: size}
	plainModel := openDefault(t, WithMemoryBudget(1<<40))
	forced := openDefault(t, WithMemoryBudget(1<<40), WithTiledVAE(On, 0))
	plain, err := plainModel.EstimateMemory(req)
	if err != nil {
		t.Fatal(err)
	}
	tiled, _ := forced.EstimateMemory(req)
	if plain.VAETile != 0 || tiled.VAETile != 64 || tiled.VAEDecoder >= plain.VAEDecoder || tiled.Total() >= plain.Total() {
		t.Fatalf("estimates: plain %+v, tiled %+v; want the tiled decode in 64-pixel tiles, and smaller", plain, tiled)
	}
	if tiled.UNet != plain.UNet || tiled.TextEncoder != plain.TextEncoder {
		t.Errorf("tiling changed the other components' estimates: %+v, %+v", plain, tiled)
	}
	budget := (plain.Total() + tiled.Total()) / 2
	t.Logf("%d²: %d bytes untiled, %d tiled; budget %d", size, plain.Total(), tiled.Total(), budget)

	off := openDefault(t, WithMemoryBudget(budget), WithTiledVAE(Off, 0))
	var me *MemoryError
	if _, err := off.Submit(t.Context(), req); !errors.As(err, &me) || me.VAETile != 0 || me.Need != plain.Total() {
		t.Fatalf("without tiling, %d² on a budget of %d: %v, want a *MemoryError for the plain decode", size, budget, err)
	}

	auto := openDefault(t, WithMemoryBudget(budget))
	if e, _ := auto.EstimateMemory(req); e != tiled {
		t.Errorf("automatic estimate %+v, want the tiled %+v", e, tiled)
	}
	if err := auto.Check(req); err != nil {
		t.Errorf("Check: %v", err)
	}
	got, err := auto.Generate(t.Context(), req)
	if err != nil {
		t.Fatalf("%d² with automatic tiling: %v", size, err)
	}
	want, err := forced.Generate(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	untiled, err := plainModel.Generate(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pixelsOf(t, got), pixelsOf(t, want)) {
		t.Error("the automatically tiled image differs from the forced tiled one")
	}
	if bytes.Equal(pixelsOf(t, got), pixelsOf(t, untiled)) {
		t.Error("the automatically tiled image is the untiled one: the decode was not tiled")
	}
	// a budget that one native tile exceeds: half tiles
	half := openDefault(t, WithMemoryBudget(1<<40), WithTiledVAE(On, 32))
	halfEst, _ := half.EstimateMemory(req)
	if halfEst.Total() >= tiled.Total() {
		t.Fatalf("32-pixel tiles need %d bytes, 64-pixel ones %d", halfEst.Total(), tiled.Total())
	}
	smaller := openDefault(t, WithMemoryBudget((halfEst.Total()+tiled.Total())/2))
	if e, _ := smaller.EstimateMemory(req); e != halfEst {
		t.Errorf("on a budget below one native tile: %+v, want the 32-pixel tiles' %+v", e, halfEst)
	}
	g32, err1 := smaller.Generate(t.Context(), req)
	w32, err2 := half.Generate(t.Context(), req)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pixelsOf(t, g32), pixelsOf(t, w32)) || bytes.Equal(pixelsOf(t, g32), pixelsOf(t, got)) {
		t.Error("on a budget below one native tile the image is not the one decoded in 32-pixel tiles")
	}
	// a small image decodes untiled, bit for bit, under forced tiling too
	small := Request{Prompt: "a red circle", Steps: 2, Seed: 3, Width: 64, Height: 64}
	a, err1 := forced.Generate(t.Context(), small)
	b, err2 := plainModel.Generate(t.Context(), small)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pixelsOf(t, a), pixelsOf(t, b)) {
		t.Error("a one-tile image differs under forced tiling")
	}

	// too large even tiled: the refusal counts the tiled decode that needs
	// least (half tiles), and the largest size that fits is the tiled one
	big := req
	big.Width, big.Height = 512, 512
	bigTiled, _ := half.EstimateMemory(big)
	_, err = auto.Submit(t.Context(), big)
	if !errors.As(err, &me) || me.VAETile != 32 || me.Need != bigTiled.Total() || !strings.Contains(err.Error(), "32-pixel tiles") {
		t.Fatalf("512² on a budget of %d: %v (need %d), want a *MemoryError counting the tiled decode (%d)", budget, err, me.Need, bigTiled.Total())
	}
	if me.FitWidth < size {
		t.Errorf("the largest size that fits is %dx%d, less than the %d² admitted tiled", me.FitWidth, me.FitHeight, size)
	}
	if w, _ := off.LargestSize(req); w >= size || w >= me.FitWidth {
		t.Errorf("the largest size without tiling is %d, with it %d", w, me.FitWidth)
	}
}

// TestTiledVAEImg2Img: under forced tiling an img2img request larger than a
// tile runs, with its encoder counted per tile, and gives another image
// than untiled (the image shows the decode's tiling; vae's tests check the
// tiled encode itself).
func TestTiledVAEImg2Img(t *testing.T) {
	init := image.NewNRGBA(image.Rect(0, 0, 128, 128))
	for y := range 128 {
		for x := range 128 {
			init.Set(x, y, color.NRGBA{uint8(2 * x), uint8(2 * y), 90, 255})
		}
	}
	req := Request{Prompt: "a red circle", Steps: 4, Seed: 1, InitImage: init, Strength: 0.5}
	forced := openDefault(t, WithTiledVAE(On, 64))
	plain := openDefault(t)
	if e, _ := forced.EstimateMemory(req); e.VAETile != 64 || e.VAEEncoder == 0 {
		t.Errorf("img2img estimate %+v, want the encoder counted in 64-pixel tiles", e)
	}
	a, err := forced.Generate(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := plain.Generate(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(pixelsOf(t, a), pixelsOf(t, b)) {
		t.Error("the tiled img2img image is the untiled one")
	}
}

func TestTiledVAEOption(t *testing.T) {
	for _, o := range []EngineOption{WithTiledVAE(On, 20), WithTiledVAE(On, 100), WithTiledVAE(Switch(3), 0), WithTiledVAE(0, -8)} {
		if _, err := newConfig([]Option{o}); err == nil || !strings.Contains(err.Error(), "WithTiledVAE") {
			t.Errorf("newConfig: %v, want a WithTiledVAE error", err)
		}
	}
	if _, err := newConfig([]Option{WithTiledVAE(Off, 0), WithTiledVAE(On, 256)}); err != nil {
		t.Error(err)
	}
}
