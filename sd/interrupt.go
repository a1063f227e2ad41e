package sd

// Interrupt ends the request's denoising early, as AUTOMATIC1111's
// interrupt does: the engine stops it before its next step and decodes the
// latents as they are, so Wait returns a partial image
// (Result.Metrics.Steps says how many steps ran) rather than an error.
// Other requests batched with it go on. Once denoising is over it does
// nothing.
func (h *Handle) Interrupt() { h.h.Interrupt() }
