package ckpt

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
)

// BenchmarkBranchInputsSD15 times what switching LoRAs costs with LoRA
// branches: preparing the branch inputs of a new LoRA mix for the SD 1.5
// UNet (every Linear and Conv branched), for a rank-32 LoRA on all of them
// (kohya LoCon: attention, feed-forward, projections, resnet convs and
// time-embedding layers), guided batch 2. Sessions are not touched; a mix
// already seen is reused from ckptrun's cache. Compare with the UNet step
// (BENCHMARKS.md).
func BenchmarkBranchInputsSD15(b *testing.B) {
	bs := &Branches{}
	if _, err := modelgen.BuildUNet(modelgen.SD15(), modelgen.Options{OnModule: BranchHook(bs)}); err != nil {
		b.Fatal(err)
	}
	branches := bs.Of(UNet)
	const rank = 32
	r := rand.New(rand.NewPCG(1, 2))
	l := &LoRA{Name: "bench"}
	for _, br := range branches {
		in := br.In * br.Kernel * br.Kernel
		m := LoRAModule{Name: br.Module, Target: Target{Component: UNet, Module: br.Module, Shape: []int64{int64(br.Out), int64(br.In), int64(br.Kernel), int64(br.Kernel)}},
			Rank: rank, Alpha: rank / 2, Kernel: br.Kernel, tOnce: new(sync.Once), Down: make([]float32, rank*in), Up: make([]float32, br.Out*rank)}
		for i := range m.Down {
			m.Down[i] = float32(r.NormFloat64())
		}
		for i := range m.Up {
			m.Up[i] = float32(r.NormFloat64())
		}
		l.Modules = append(l.Modules, m)
	}
	rows := [][]Applied{{{l, 0.8}}, {{l, 0.8}}}
	b.ReportMetric(float64(len(branches)), "branches")
	b.ResetTimer()
	for b.Loop() {
		if _, err := BranchInputs(bs, UNet, rows); err != nil {
			b.Fatal(err)
		}
	}
}
