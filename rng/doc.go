// Package rng provides seeded standard-normal generators that reproduce,
// bit for bit, the Gaussian streams of the two libraries Stable Diffusion
// tools draw their initial latents from:
//
//   - [Numpy] reproduces np.random.RandomState(seed).randn(...) (legacy
//     MT19937 seeding and the polar Box–Muller method with its cached second
//     value), followed by .astype(np.float32). diffusers' ONNX pipelines draw
//     their latents this way.
//   - [Torch] reproduces torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))
//     for float32 as torch 1.13 computes it on x86-64 CPUs with AVX2, emulating
//     its single-precision AVX2 Box–Muller (Cephes log/sincos with the FMAs
//     GCC contracted) lane by lane. diffusers' PyTorch pipelines and ComfyUI
//     on CPU draw their latents this way.
//
// Both implement [Source]; [New] picks one by [Kind] ([KindNumpy],
// [KindTorchCPU]; [ParseKind] reads "numpy", "torch" or "torch-cpu").
// Consecutive Randn calls on one generator continue its stream exactly as
// consecutive randn calls in Python do. Generators are pure Go,
// allocate nothing per call and are not safe for concurrent use: give each
// request its own generator.
package rng
