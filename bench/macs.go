package main

import "github.com/sdpipe/sdpipe/internal/modelgen"

// MACs is a multiply-accumulate count of one model call, split by the
// operator that performs it.
type MACs struct {
	Conv   float64 `json:"conv"`   // Conv (including 1×1 projections)
	MatMul float64 `json:"matmul"` // MatMul/Gemm: linear layers and attention
	// Attention is the part of MatMul that multiplies activations by
	// activations (attention scores and values), which int8 leaves in
	// float32; the rest of MatMul has constant weights.
	Attention float64 `json:"attention_products"`
}

// Total returns Conv + MatMul.
func (m MACs) Total() float64 { return m.Conv + m.MatMul }

// FLOPs returns 2·Total, the floating-point operations of the call.
func (m MACs) FLOPs() float64 { return 2 * m.Total() }

func (m *MACs) conv(in, out, k, h, w, batch int) {
	m.Conv += float64(batch) * float64(h*w) * float64(in*out*k*k)
}

func (m *MACs) matmul(rows, in, out int) { m.MatMul += float64(rows) * float64(in) * float64(out) }

// attention counts q, k, v and output projections and the score and value
// products of n queries over ctx keys of width ctxDim, for batch rows.
func (m *MACs) attention(batch, n, ctx, dim, ctxDim int) {
	m.matmul(batch*n, dim, dim)      // q
	m.matmul(batch*ctx, ctxDim, dim) // k
	m.matmul(batch*ctx, ctxDim, dim) // v
	m.matmul(batch*n, dim, dim)      // out
	p := 2 * float64(batch) * float64(n) * float64(ctx) * float64(dim)
	m.MatMul += p
	m.Attention += p
}

// The counts below follow the graphs internal/modelgen builds (diffusers'
// architecture) layer by layer. They are analytic: computed from the
// configuration and input shape, not by inspecting an ONNX file, so they
// hold for diffusers exports of the same architecture only as far as those
// graphs compute the same products (PERF-FACTS.md's counts on exported SD
// 1.5 graphs agree to 0.1 GMAC; see macs_test.go). Elementwise work
// (normalisation, activations, softmax, additions) is left out.

// UNetMACs returns the MACs of one UNet call on batch latents of
// latH×latW with seq text tokens (77 for CLIP).
func UNetMACs(cfg modelgen.Config, batch, latH, latW, seq int) MACs {
	u := cfg.UNet
	cross := u.CrossDim
	if cross == 0 {
		cross = cfg.Text.Hidden
		if cfg.Text2 != nil {
			cross += cfg.Text2.Hidden
		}
	}
	var m MACs
	ch0 := u.BlockChannels[0]
	tdim := 4 * ch0
	m.matmul(batch, ch0, tdim)
	m.matmul(batch, tdim, tdim)
	if u.AdditionEmbed == "text_time" { // SDXL's add_embedding
		m.matmul(batch, u.ProjectionInputDim, tdim)
		m.matmul(batch, tdim, tdim)
	}
	// proj_in/proj_out are 1×1 convolutions in SD 1.x and Linear layers
	// (use_linear_projection) in SD 2.x and SDXL: the same products.
	proj := func(c, h, w int) {
		if u.LinearProjection {
			m.matmul(batch*h*w, c, c)
		} else {
			m.conv(c, c, 1, h, w, batch)
		}
	}
	layers := func(level int) int {
		if len(u.TransformerLayers) > level {
			return u.TransformerLayers[level]
		}
		return 1
	}
	resnet := func(in, out, h, w int) {
		m.conv(in, out, 3, h, w, batch)
		m.matmul(batch, tdim, out)
		m.conv(out, out, 3, h, w, batch)
		if in != out {
			m.conv(in, out, 1, h, w, batch)
		}
	}
	// transformer is a Transformer2DModel of depth blocks.
	transformer := func(c, h, w, depth int) {
		n := h * w
		proj(c, h, w) // proj_in
		for range depth {
			m.attention(batch, n, n, c, c)
			m.attention(batch, n, seq, c, cross)
			m.matmul(batch*n, c, 8*c) // GEGLU proj
			m.matmul(batch*n, 4*c, c)
		}
		proj(c, h, w) // proj_out
	}
	h, w := latH, latW
	m.conv(u.InChannels, ch0, 3, h, w, batch)
	skips := []int{ch0}
	prev := ch0
	last := len(u.BlockChannels) - 1
	for i, ch := range u.BlockChannels {
		for range u.LayersPerBlock {
			resnet(prev, ch, h, w)
			prev = ch
			if u.CrossAttention[i] {
				transformer(ch, h, w, layers(i))
			}
			skips = append(skips, ch)
		}
		if i < last {
			h, w = (h+1)/2, (w+1)/2
			m.conv(ch, ch, 3, h, w, batch) // stride 2: output size
			skips = append(skips, ch)
		}
	}
	top := u.BlockChannels[last]
	resnet(top, top, h, w)
	transformer(top, h, w, layers(last))
	resnet(top, top, h, w)
	for i := range u.BlockChannels {
		ch := u.BlockChannels[last-i]
		for j := 0; j <= u.LayersPerBlock; j++ {
			s := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			resnet(prev+s, ch, h, w)
			prev = ch
			if u.CrossAttention[last-i] {
				transformer(ch, h, w, layers(last-i))
			}
		}
		if i < last {
			h, w = 2*h, 2*w
			m.conv(ch, ch, 3, h, w, batch)
		}
	}
	m.conv(ch0, u.OutChannels, 3, h, w, batch)
	return m
}

// VAEDecoderMACs returns the MACs of decoding batch latents of latH×latW
// (images 8× larger).
func VAEDecoderMACs(cfg modelgen.Config, batch, latH, latW int) MACs {
	v := cfg.VAE
	var m MACs
	lc := v.LatentChannels
	n := len(v.BlockChannels)
	top := v.BlockChannels[n-1]
	h, w := latH, latW
	resnet := func(in, out int) {
		m.conv(in, out, 3, h, w, batch)
		m.conv(out, out, 3, h, w, batch)
		if in != out {
			m.conv(in, out, 1, h, w, batch)
		}
	}
	m.conv(lc, lc, 1, h, w, batch)
	m.conv(lc, top, 3, h, w, batch)
	resnet(top, top)
	m.attention(batch, h*w, h*w, top, top)
	resnet(top, top)
	prev := top
	for i := range n {
		ch := v.BlockChannels[n-1-i]
		for j := 0; j <= v.LayersPerBlock; j++ {
			resnet(prev, ch)
			prev = ch
		}
		if i < n-1 {
			h, w = 2*h, 2*w
			m.conv(ch, ch, 3, h, w, batch)
		}
	}
	m.conv(v.BlockChannels[0], 3, 3, h, w, batch)
	return m
}

// TextEncoderMACs returns the MACs of encoding batch sequences of seq
// tokens, with both encoders where the architecture has two (SDXL).
func TextEncoderMACs(cfg modelgen.Config, batch, seq int) MACs {
	var m MACs
	for _, t := range []*modelgen.TextConfig{&cfg.Text, cfg.Text2} {
		if t == nil {
			continue
		}
		for range t.Layers {
			m.attention(batch, seq, seq, t.Hidden, t.Hidden)
			m.matmul(batch*seq, t.Hidden, t.Intermediate)
			m.matmul(batch*seq, t.Intermediate, t.Hidden)
		}
		if t.ProjectionDim > 0 { // text_projection of the pooled token
			m.matmul(batch, t.Hidden, t.ProjectionDim)
		}
	}
	return m
}
