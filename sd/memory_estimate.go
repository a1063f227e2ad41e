package sd

// The memory a request needs, estimated from the components' signatures.
//
// ONNX Runtime keeps each session's largest need in its memory arena, so a
// request's cost is the sum of what each component's call needs (the
// components run one after the other, but their arenas stay), except for
// the sessions that give their memory back (memory.go: no arena, or closed
// after the call). A call's
// need is its rows times, per row: twice the largest attention score
// tensor (the scores and their softmax are alive together; it grows with
// the square of the latent area for self-attention, and with the area
// times the text length for cross-attention), plus actFactor times the
// widest activation. The factors come from measuring peak RSS against
// this estimate on the default model and the generated SD 1.5 model
// (see the server's README section on limits for the figures).
const (
	attnFactor = 2
	actFactor  = 3
)

// callShape is what one call of a component computes over.
type callShape struct {
	rows   int64 // batch rows
	h, w   int64 // the component's input resolution (tokens: h = sequence, w = 1)
	keys   int64 // cross-attention keys (text tokens), 0 without
	visual bool  // h×w is an image grid that halves per level
}

// tokens returns the number of positions at a level.
func (c callShape) tokens(level int) int64 {
	if !c.visual {
		return c.h * c.w
	}
	h, w := c.h, c.w
	for l := level; l > 0; l-- {
		h, w = (h+1)/2, (w+1)/2
	}
	for l := level; l < 0; l++ {
		h, w = 2*h, 2*w
	}
	return h * w
}

// need estimates the bytes of one call's intermediate tensors.
func (s *memSignature) need(c callShape) int64 {
	if s == nil {
		return 0
	}
	var attn int64
	for _, a := range s.self {
		n := c.tokens(a.level)
		attn = max(attn, a.heads*n*n)
	}
	for _, a := range s.cross {
		attn = max(attn, a.heads*c.tokens(a.level)*max(c.keys, 1))
	}
	var act int64
	for l, ch := range s.width {
		act = max(act, ch*c.tokens(l))
	}
	return s.elem * c.rows * (attnFactor*attn + actFactor*act)
}
