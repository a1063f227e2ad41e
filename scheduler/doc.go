// Package scheduler implements the diffusers noise schedulers used by Stable
// Diffusion pipelines, configured from a model's scheduler_config.json, with
// numerical parity to diffusers 0.40.0 (torch float32 arithmetic is mirrored
// operation by operation, so trajectories agree to about 1e-6).
//
// A Config is parsed once per model and shared; New creates the per-request
// Scheduler from it by diffusers class name ("EulerDiscreteScheduler") or by
// A1111 sampler name ("Euler a", "DPM++ 2M Karras"); Names lists them all.
// Noise for stochastic samplers is injected through the Noise interface, so
// a pipeline can reproduce numpy or torch random streams.
//
// The pipeline loop is:
//
//	s, err := scheduler.New("DPM++ 2M Karras", cfg, scheduler.Options{Steps: 25, Size: len(latents), Noise: rng})
//	// txt2img: latents[j] = noise[j] * float32(s.InitNoiseSigma())
//	// img2img (Options.Strength > 0): s.AddNoise(latents, initLatents, noise)
//	for i, t := range s.Timesteps() {
//		s.ScaleModelInput(x, latents, i)
//		eps := unet(x, t) // with classifier-free guidance applied
//		if err := s.Step(eps, latents, i); err != nil { ... }
//	}
//
// Step allocates nothing and updates the latents in place. For LCMScheduler
// the pipeline decodes the consistency output of the last step (the *LCM's
// Denoised method, diffusers' final "denoised"), which equals the final
// latents because the last LCM step adds no noise.
//
// The concrete types returned by New (*Euler, *DPMMultistep, ...) offer
// optional methods beyond Scheduler: Sigmas() []float32 on sigma-based
// schedulers, PredOriginal() []float32 (x0 of the last step) on DDIM, DDPM,
// LCM and Euler, and Denoised() []float32 on LCM.
//
// Img2img: with Options.Strength in (0, 1] the schedule is truncated as
// Options.Img2Img says (Modern: StableDiffusionImg2ImgPipeline; LegacyONNX:
// OnnxStableDiffusionImg2ImgPipeline); Timesteps then lists only the
// remaining evaluations and AddNoise noises the init latents at the start.
package scheduler
