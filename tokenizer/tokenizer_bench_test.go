package tokenizer

import (
	"path/filepath"
	"strings"
	"testing"
)

// Tokenizer work beyond BenchmarkEncode and friends in tokenizer_test.go:
// loading (once a model), long weighted prompts that split into chunks,
// and padding a prompt pair to the same number of chunks.

func BenchmarkLoad(b *testing.B) {
	dir := filepath.Join(sharedDir(b), "clip-tokenizer")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

const longPrompt = "masterpiece, (best quality:1.2), a photo of an (astronaut:1.1) riding a [horse] on mars, ((detailed)), " +
	"dramatic lighting, volumetric fog, red dust, distant mountains, two moons in the sky, cinematic composition, " +
	"shot on 35mm film, grain, BREAK wide angle, high dynamic range, intricate spacesuit, reflections on the visor, " +
	"footprints in the sand, a small rover in the background, golden hour, long shadows, hyperrealistic, 8k"

func BenchmarkEncodeWeightedLong(b *testing.B) {
	tok := realCLIP(b)
	p, err := tok.EncodeWeighted(longPrompt)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tok.EncodeWeighted(longPrompt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(p.Chunks)), "chunks")
}

func BenchmarkPadChunks(b *testing.B) {
	tok := realCLIP(b)
	neg := strings.Repeat("blurry, ", 3)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		cond, err := tok.EncodeWeighted(longPrompt)
		if err != nil {
			b.Fatal(err)
		}
		uncond, err := tok.EncodeWeighted(neg)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		tok.PadChunks(cond, uncond)
	}
}
