// Package rng provides seeded standard-normal generators that reproduce,
// bit for bit, the Gaussian streams of the two libraries Stable Diffusion
// tools draw their initial latents from:
//
//   - [Numpy] reproduces np.random.RandomState(seed).randn(...) (legacy
//     MT19937 seeding and the polar Box–Muller method with its cached second
//     value), followed by .astype(np.float32). diffusers' ONNX pipelines draw
//     their latents this way.
//   - [Torch] reproduces torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))
//     for float32 on x86-64 CPUs with AVX2 (torch 1.13). diffusers' PyTorch
//     pipelines and ComfyUI on CPU draw their latents this way.
//
// Both implement [Source]; [New] picks one by [Kind]. Generators are pure Go,
// allocate nothing per call and are not safe for concurrent use: give each
// request its own generator.
package rng
