package pipeline

// Interrupt ends the request's denoising early, as AUTOMATIC1111's
// interrupt does: the denoise stage stops it before its next step (or
// before its first) and the latents decode as they are, so Wait returns a
// partial image (Result.Metrics.Steps says how many steps ran) instead of
// an error. It does nothing once denoising is over. Other requests of a
// batch go on.
func (h *Handle) Interrupt() { h.j.interrupted.Store(true) }
