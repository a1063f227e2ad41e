package scheduler

// AddNoiseAt writes to dst original noised to the level of the sample that
// model evaluation i of s takes (before ScaleModelInput): what diffusers'
// inpainting loop does with scheduler.add_noise(original, noise,
// timesteps[i]) to blend the known region back after each step. i =
// len(s.Timesteps()) is the end of the schedule, where dst is original.
// It leaves s's AddNoise as it was. dst may alias original; s must come
// from New, and AddNoiseAt panics for an i outside [0, len(Timesteps())].
func AddNoiseAt(s Scheduler, dst, original, noise []float32, i int) {
	b := s.(interface{ baseOf() *base }).baseOf()
	n := len(b.full) - b.begin
	if i < 0 || i > n {
		panic("scheduler: AddNoiseAt past the schedule")
	}
	if i == n {
		copy(dst, original)
		return
	}
	idx, t := b.noiseIdx, b.noiseT
	b.noiseIdx, b.noiseT = b.stepStart+i, b.full[b.begin+i]
	s.AddNoise(dst, original, noise)
	b.noiseIdx, b.noiseT = idx, t
}

// baseOf gives AddNoiseAt the state every scheduler embeds.
func (b *base) baseOf() *base { return b }
