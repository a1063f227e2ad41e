package modelgen

import (
	"encoding/json"
	"fmt"
	"math"
)

// ParseTextConfig reads a transformers CLIPTextConfig (a text_encoder's
// config.json). withProjection tells whether the model is a
// CLIPTextModelWithProjection (SDXL's text_encoder_2), whose
// projection_dim then sizes text_projection; CLIPTextModel configs carry a
// projection_dim too, which it has no use for. Values the builder cannot
// reproduce (another layer_norm_eps, an unknown activation) are errors.
func ParseTextConfig(data []byte, withProjection bool) (TextConfig, error) {
	var c struct {
		Vocab        *int     `json:"vocab_size"`
		Hidden       *int     `json:"hidden_size"`
		Layers       *int     `json:"num_hidden_layers"`
		Heads        *int     `json:"num_attention_heads"`
		Intermediate *int     `json:"intermediate_size"`
		MaxPositions *int     `json:"max_position_embeddings"`
		Act          *string  `json:"hidden_act"`
		Projection   *int     `json:"projection_dim"`
		EOS          *int     `json:"eos_token_id"`
		Eps          *float64 `json:"layer_norm_eps"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return TextConfig{}, fmt.Errorf("modelgen: text encoder config: %w", err)
	}
	// CLIPTextConfig's defaults.
	t := TextConfig{
		Vocab: or(c.Vocab, 49408), Hidden: or(c.Hidden, 512), Layers: or(c.Layers, 12), Heads: or(c.Heads, 8),
		Intermediate: or(c.Intermediate, 2048), MaxPositions: or(c.MaxPositions, 77), Activation: or(c.Act, "quick_gelu"),
		EOSTokenID: or(c.EOS, 2),
	}
	if withProjection {
		t.ProjectionDim = or(c.Projection, 512)
	}
	if eps := or(c.Eps, 1e-5); math.Abs(eps-1e-5) > 1e-12 {
		return TextConfig{}, fmt.Errorf("modelgen: text encoder config: layer_norm_eps %g not supported (1e-5)", eps)
	}
	if a := t.Activation; a != "quick_gelu" && a != "gelu" {
		return TextConfig{}, fmt.Errorf("modelgen: text encoder config: hidden_act %q not supported (quick_gelu or gelu)", a)
	}
	return t, nil
}

// ParseUNetConfig reads a diffusers UNet2DConditionModel config.json (keys
// left out take diffusers' defaults). The SD 1.x, SD 2.x, SDXL,
// inpainting and LCM UNets are supported; a config the builder cannot
// reproduce (other block types, class embeddings, another time embedding …)
// is an error naming the key.
func ParseUNetConfig(data []byte) (UNetConfig, error) {
	r, err := newJSONReader(data, "unet config")
	if err != nil {
		return UNetConfig{}, err
	}
	u := UNetConfig{
		BlockChannels:   r.ints("block_out_channels", 320, 640, 1280, 1280),
		InChannels:      r.int("in_channels", 4),
		OutChannels:     r.int("out_channels", 4),
		SampleSize:      r.int("sample_size", 0),
		CrossDim:        r.int("cross_attention_dim", 1280),
		AdditionEmbed:   r.str("addition_embed_type", ""),
		TimeCondProjDim: r.int("time_cond_proj_dim", 0),
	}
	n := len(u.BlockChannels)
	down := r.strs("down_block_types", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
	up := r.strs("up_block_types", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
	if r.err == nil && (len(down) != n || len(up) != n) {
		r.fail("block types %v / %v for %d levels", down, up, n)
	}
	for i := 0; r.err == nil && i < n; i++ {
		switch down[i] {
		case "CrossAttnDownBlock2D":
			u.CrossAttention = append(u.CrossAttention, true)
		case "DownBlock2D":
			u.CrossAttention = append(u.CrossAttention, false)
		default:
			r.fail("down block type %q not supported", down[i])
		}
		want := "UpBlock2D"
		if u.CrossAttention[len(u.CrossAttention)-1] {
			want = "CrossAttnUpBlock2D"
		}
		if r.err == nil && up[n-1-i] != want {
			r.fail("up_block_types %v do not mirror down_block_types %v", up, down)
		}
	}
	u.LayersPerBlock = r.uniform("layers_per_block", n, 2)
	heads := r.perLevel("num_attention_heads", n, 0)
	if heads == nil {
		heads = r.perLevel("attention_head_dim", n, 8) // diffusers uses it as the head count
	}
	u.LevelHeads = heads
	if allSame(heads) {
		u.Heads, u.LevelHeads = heads[0], nil
	}
	if tl := r.perLevel("transformer_layers_per_block", n, 1); !allSame(tl) || (len(tl) > 0 && tl[0] != 1) {
		u.TransformerLayers = tl
	}
	u.LinearProjection = r.bool("use_linear_projection", false)
	u.UpcastAttention = r.bool("upcast_attention", false)
	if u.AdditionEmbed == "text_time" {
		u.AdditionTimeEmbedDim = r.int("addition_time_embed_dim", 0)
		u.ProjectionInputDim = r.int("projection_class_embeddings_input_dim", 0)
	}
	// What the builder hard-codes, as diffusers' defaults.
	r.want("mid_block_type", "UNetMidBlock2DCrossAttn")
	r.want("act_fn", "silu")
	r.want("time_embedding_type", "positional")
	r.want("resnet_time_scale_shift", "default")
	r.want("attention_type", "default")
	r.wantNum("norm_num_groups", 32)
	r.wantNum("norm_eps", 1e-5)
	r.wantNum("freq_shift", 0)
	r.wantNum("conv_in_kernel", 3)
	r.wantNum("conv_out_kernel", 3)
	r.wantNum("downsample_padding", 1)
	r.wantNum("mid_block_scale_factor", 1)
	r.wantNum("resnet_out_scale_factor", 1)
	r.wantBool("flip_sin_to_cos", true)
	r.wantBool("center_input_sample", false)
	r.wantBool("only_cross_attention", false)
	r.wantBool("dual_cross_attention", false)
	r.wantBool("resnet_skip_time_act", false)
	r.wantBool("class_embeddings_concat", false)
	for _, k := range []string{"class_embed_type", "num_class_embeds", "encoder_hid_dim", "encoder_hid_dim_type",
		"time_embedding_dim", "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
		"reverse_transformer_layers_per_block", "mid_block_only_cross_attention"} {
		r.wantNull(k)
	}
	if r.err != nil {
		return UNetConfig{}, r.err
	}
	return u, nil
}

// ParseVAEConfig reads a diffusers AutoencoderKL config.json (keys left
// out take diffusers' defaults); what the builder cannot reproduce is an
// error naming the key.
func ParseVAEConfig(data []byte) (VAEConfig, error) {
	r, err := newJSONReader(data, "vae config")
	if err != nil {
		return VAEConfig{}, err
	}
	v := VAEConfig{
		BlockChannels:  r.ints("block_out_channels", 64),
		LayersPerBlock: r.int("layers_per_block", 1),
		LatentChannels: r.int("latent_channels", 4),
		ScalingFactor:  r.float("scaling_factor", 0.18215),
		ForceUpcast:    r.bool("force_upcast", true),
		SampleSize:     r.int("sample_size", 32),
	}
	if cls := r.str("_class_name", "AutoencoderKL"); cls != "AutoencoderKL" {
		r.fail("_class_name %q is not AutoencoderKL", cls)
	}
	r.want("act_fn", "silu")
	r.wantNum("norm_num_groups", 32)
	r.wantNum("in_channels", 3)
	r.wantNum("out_channels", 3)
	r.wantBool("use_quant_conv", true)
	r.wantBool("use_post_quant_conv", true)
	r.wantBool("mid_block_add_attention", true)
	for _, k := range []string{"latents_mean", "latents_std", "shift_factor"} {
		r.wantNull(k)
	}
	if r.err != nil {
		return VAEConfig{}, r.err
	}
	return v, nil
}

func or[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func allSame(v []int) bool {
	for _, x := range v {
		if x != v[0] {
			return false
		}
	}
	return true
}

// jsonReader reads keys of a config, keeping the first error.
type jsonReader struct {
	m    map[string]json.RawMessage
	what string
	err  error
}

// newJSONReader decodes the JSON object data for reading its keys; what
// names it in errors ("unet config").
func newJSONReader(data []byte, what string) (jsonReader, error) {
	var c map[string]json.RawMessage
	if err := json.Unmarshal(data, &c); err != nil {
		return jsonReader{}, fmt.Errorf("modelgen: %s: %w", what, err)
	}
	return jsonReader{m: c, what: what}, nil
}

func (r *jsonReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("modelgen: %s: %s", r.what, fmt.Sprintf(format, args...))
	}
}

// get decodes key into v; false when absent or null.
func (r *jsonReader) get(key string, v any) bool {
	raw, ok := r.m[key]
	if !ok || string(raw) == "null" {
		return false
	}
	if err := json.Unmarshal(raw, v); err != nil {
		r.fail("%s: %v", key, err)
		return false
	}
	return true
}

func (r *jsonReader) int(key string, def int) int {
	var f float64
	if !r.get(key, &f) {
		return def
	}
	if f != math.Trunc(f) {
		r.fail("%s is %v, not an integer", key, f)
	}
	return int(f)
}

func (r *jsonReader) float(key string, def float64) float64 {
	var f float64
	if !r.get(key, &f) {
		return def
	}
	return f
}

func (r *jsonReader) bool(key string, def bool) bool {
	var b bool
	if !r.get(key, &b) {
		return def
	}
	return b
}

func (r *jsonReader) str(key, def string) string {
	var s string
	if !r.get(key, &s) {
		return def
	}
	return s
}

func (r *jsonReader) ints(key string, def ...int) []int {
	var v []int
	if !r.get(key, &v) {
		return def
	}
	return v
}

func (r *jsonReader) strs(key string, def ...string) []string {
	var v []string
	if !r.get(key, &v) {
		return def
	}
	return v
}

// perLevel reads an int-or-list key as n per-level values; nil when the
// key is absent and def is 0.
func (r *jsonReader) perLevel(key string, n, def int) []int {
	raw, ok := r.m[key]
	if !ok || string(raw) == "null" {
		if def == 0 {
			return nil
		}
		raw = json.RawMessage(fmt.Sprint(def))
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		v := make([]int, n)
		for i := range v {
			v[i] = one
		}
		return v
	}
	var list []int
	if err := json.Unmarshal(raw, &list); err != nil {
		r.fail("%s: %v", key, err)
		return nil
	}
	if len(list) != n {
		r.fail("%s has %d values for %d levels", key, len(list), n)
		return nil
	}
	return list
}

// uniform reads an int-or-list key that must be the same at every level.
func (r *jsonReader) uniform(key string, n, def int) int {
	v := r.perLevel(key, n, def)
	if r.err != nil || len(v) == 0 {
		return def
	}
	if !allSame(v) {
		r.fail("%s %v differs between levels (not supported)", key, v)
	}
	return v[0]
}

func (r *jsonReader) want(key, want string) {
	if got := r.str(key, want); got != want {
		r.fail("%s %q not supported (%q)", key, got, want)
	}
}

func (r *jsonReader) wantNum(key string, want float64) {
	if got := r.float(key, want); math.Abs(got-want) > 1e-12 {
		r.fail("%s %v not supported (%v)", key, got, want)
	}
}

func (r *jsonReader) wantBool(key string, want bool) {
	if got := r.bool(key, want); got != want {
		r.fail("%s %v not supported (%v)", key, got, want)
	}
}

func (r *jsonReader) wantNull(key string) {
	if raw, ok := r.m[key]; ok && string(raw) != "null" {
		r.fail("%s %s not supported (null)", key, raw)
	}
}
