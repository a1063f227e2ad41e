package ckpt

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// Param says where one diffusers parameter lies in a checkpoint.
type Param struct {
	// Key is the checkpoint tensor holding the parameter.
	Key string
	// Shape is the parameter's PyTorch shape in diffusers (Linear [out, in],
	// Conv [out, in, kh, kw]).
	Shape []int64
	// Rows, when Rows[1] > 0, selects rows [Rows[0], Rows[1]) of the
	// tensor's first dimension (OpenCLIP's fused q/k/v projection), which
	// are contiguous bytes.
	Rows [2]int64
	// Transpose says the tensor holds the parameter's 2-d transpose
	// (OpenCLIP's text_projection), so its bytes are not in order.
	Transpose bool
}

// Contiguous reports whether the parameter is a contiguous byte range of
// its tensor (everything but a transposed tensor), so that it can be
// referenced in place.
func (p Param) Contiguous() bool { return !p.Transpose }

// Mapping places a checkpoint's tensors: for each component, diffusers key →
// where its value lies.
type Mapping struct {
	Params map[Component]map[string]Param
	// Ignored lists the checkpoint keys deliberately left out (EMA copies,
	// schedule buffers, position_ids, SD 2.x's unused last text layer).
	Ignored []string
}

// Lookup returns the parameter name of component c.
func (m *Mapping) Lookup(c Component, name string) (Param, bool) {
	p, ok := m.Params[c][name]
	return p, ok
}

// ignoredKey reports whether key is one of the non-model entries real
// checkpoints carry.
func ignoredKey(key string) bool {
	switch key {
	case "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
		"sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
		"sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
		"posterior_variance", "posterior_log_variance_clipped",
		"posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
		"scale_factor", "global_step", "epoch":
		return true
	}
	switch {
	case strings.HasPrefix(key, "model_ema."),
		strings.HasPrefix(key, "first_stage_model.loss."),
		strings.HasPrefix(key, "denoiser."), // SDXL's sigma buffers
		strings.HasSuffix(key, ".position_ids"),
		strings.HasSuffix(key, ".logit_scale"),
		strings.HasSuffix(key, ".attn_mask"):
		return true
	}
	return false
}

// Convert places every tensor of an original-layout checkpoint of
// architecture a. Keys that belong to no component and are not known
// extras are an error naming them.
func Convert(ts []safetensors.Info, a *Arch) (*Mapping, error) {
	k := newKeyset(ts)
	m := &Mapping{Params: map[Component]map[string]Param{}}
	var unplaced []string
	add := func(c Component, name string, p Param) error {
		if m.Params[c] == nil {
			m.Params[c] = map[string]Param{}
		}
		if old, dup := m.Params[c][name]; dup {
			return &FormatError{Reason: fmt.Sprintf("%s parameter %s comes from two keys", c, name), Keys: []string{old.Key, p.Key}}
		}
		if p.Shape == nil {
			p.Shape = k.shape(p.Key)
		}
		m.Params[c][name] = p
		return nil
	}
	textPrefixes := map[string]Component{}
	switch a.Family {
	case SD1:
		textPrefixes[clipPrefix] = TextEncoder
	case SD2:
		textPrefixes[openCLIPSD2] = TextEncoder
	case SDXL:
		textPrefixes[sdxlCLIP] = TextEncoder
		textPrefixes[sdxlOpenCLIP] = TextEncoder2
	case SDXLRefiner:
		textPrefixes[refinerCLIP] = TextEncoder2
	}
	text := map[Component]TextArch{}
	for _, t := range a.Text {
		text[t.Component] = t
	}
	for _, name := range slices.Sorted(maps.Keys(k)) {
		if ignoredKey(name) {
			m.Ignored = append(m.Ignored, name)
			continue
		}
		var (
			ps  []placed
			ok  bool
			err error
		)
		switch {
		case strings.HasPrefix(name, unetPrefix):
			var d string
			if d, ok = unetKey(strings.TrimPrefix(name, unetPrefix), a.UNet); ok {
				ps = []placed{{UNet, d, Param{Key: name}}}
			}
		case strings.HasPrefix(name, vaePrefix):
			ps, ok = vaeKey(k, name, strings.TrimPrefix(name, vaePrefix), len(a.VAE.BlockChannels))
		default:
			for prefix, c := range textPrefixes {
				if rest, found := strings.CutPrefix(name, prefix); found {
					if strings.HasSuffix(prefix, ".model.") {
						ps, ok, err = openCLIPKey(k, name, rest, text[c])
					} else {
						ps, ok = clipKey(name, rest, c)
					}
					break
				}
			}
		}
		if err != nil {
			return nil, err
		}
		if !ok {
			unplaced = append(unplaced, name)
			continue
		}
		if ps == nil {
			m.Ignored = append(m.Ignored, name)
		}
		for _, p := range ps {
			if err := add(p.c, p.name, p.p); err != nil {
				return nil, err
			}
		}
	}
	if len(unplaced) > 0 {
		return nil, keysErr(fmt.Sprintf("%d checkpoint keys fit no part of the detected %s architecture", len(unplaced), a.Family), unplaced)
	}
	return m, nil
}

// placed is one diffusers parameter a checkpoint key provides.
type placed struct {
	c    Component
	name string
	p    Param
}

// ConvertVAE places the tensors of a separate VAE file: original layout
// (encoder.down.*, optionally under first_stage_model.) or diffusers layout
// (encoder.down_blocks.*, including diffusers' old attention names).
func ConvertVAE(ts []safetensors.Info) (*VAEArch, *Mapping, error) {
	k := newKeyset(ts)
	m := &Mapping{Params: map[Component]map[string]Param{VAE: {}}}
	if k.hasPrefix("encoder.down_blocks.") {
		v, err := detectDiffusersVAE(k)
		if err != nil {
			return nil, nil, err
		}
		var unplaced []string
		for _, name := range slices.Sorted(maps.Keys(k)) {
			if ignoredKey(name) || strings.HasPrefix(name, "loss.") {
				m.Ignored = append(m.Ignored, name)
				continue
			}
			d, ok := diffusersVAEKey(name)
			if !ok {
				unplaced = append(unplaced, name)
				continue
			}
			p := Param{Key: name, Shape: k.shape(name)}
			if strings.Contains(d, "attentions.0.to_") && strings.HasSuffix(d, ".weight") && len(p.Shape) > 2 {
				p.Shape = p.Shape[:2]
			}
			m.Params[VAE][d] = p
		}
		if len(unplaced) > 0 {
			return nil, nil, keysErr("VAE file keys this loader cannot place", unplaced)
		}
		return v, m, nil
	}
	prefix := ""
	if k.hasPrefix(vaePrefix) {
		prefix = vaePrefix
	}
	v, err := detectVAE(k, prefix)
	if err != nil {
		return nil, nil, err
	}
	var unplaced []string
	for _, name := range slices.Sorted(maps.Keys(k)) {
		rest, ok := strings.CutPrefix(name, prefix)
		if ignoredKey(name) || strings.HasPrefix(rest, "loss.") {
			m.Ignored = append(m.Ignored, name)
			continue
		}
		var ps []placed
		if ok {
			ps, ok = vaeKey(k, name, rest, len(v.BlockChannels))
		}
		if !ok {
			unplaced = append(unplaced, name)
			continue
		}
		for _, p := range ps {
			if p.p.Shape == nil {
				p.p.Shape = k.shape(p.p.Key)
			}
			m.Params[VAE][p.name] = p.p
		}
	}
	if len(unplaced) > 0 {
		return nil, nil, keysErr("VAE file keys this loader cannot place", unplaced)
	}
	return &v, m, nil
}

// splitIndex cuts "N.rest" into N and rest.
func splitIndex(s string) (int, string, bool) {
	num, rest, ok := strings.Cut(s, ".")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 0 || num != strconv.Itoa(n) {
		return 0, "", false
	}
	return n, rest, true
}

// resnetKey renames the sub-key of an LDM ResBlock.
func resnetKey(rest string) (string, bool) {
	for _, r := range [][2]string{
		{"in_layers.0.", "norm1."}, {"in_layers.2.", "conv1."},
		{"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."},
		{"emb_layers.1.", "time_emb_proj."}, {"skip_connection.", "conv_shortcut."},
	} {
		if s, ok := strings.CutPrefix(rest, r[0]); ok && (s == "weight" || s == "bias") {
			return r[1] + s, true
		}
	}
	return "", false
}

// transformerKey checks the sub-key of an LDM SpatialTransformer (already
// in diffusers naming) with depth transformer blocks.
func transformerKey(sub string, depth int) bool {
	wb := func(s string) bool { return s == "weight" || s == "bias" }
	for _, p := range []string{"norm.", "proj_in.", "proj_out."} {
		if s, ok := strings.CutPrefix(sub, p); ok {
			return wb(s)
		}
	}
	rest, ok := strings.CutPrefix(sub, "transformer_blocks.")
	if !ok {
		return false
	}
	n, rest, ok := splitIndex(rest)
	if !ok || n >= depth {
		return false
	}
	for _, p := range []string{"norm1.", "norm2.", "norm3.", "ff.net.0.proj.", "ff.net.2.", "attn1.to_out.0.", "attn2.to_out.0."} {
		if s, ok := strings.CutPrefix(rest, p); ok {
			return wb(s)
		}
	}
	for _, a := range []string{"attn1.", "attn2."} {
		for _, p := range []string{"to_q.weight", "to_k.weight", "to_v.weight"} {
			if rest == a+p {
				return true
			}
		}
	}
	return false
}

// unetKey maps an LDM UNet key (without model.diffusion_model.) to its
// diffusers name.
func unetKey(key string, u UNetArch) (string, bool) {
	lpb := u.LayersPerBlock
	levels := len(u.BlockChannels)
	for _, r := range [][2]string{
		{"time_embed.0.", "time_embedding.linear_1."}, {"time_embed.2.", "time_embedding.linear_2."},
		{"input_blocks.0.0.", "conv_in."}, {"out.0.", "conv_norm_out."}, {"out.2.", "conv_out."},
	} {
		if s, ok := strings.CutPrefix(key, r[0]); ok {
			return r[1] + s, true
		}
	}
	if u.AdditionEmbedInputDim > 0 {
		for _, r := range [][2]string{{"label_emb.0.0.", "add_embedding.linear_1."}, {"label_emb.0.2.", "add_embedding.linear_2."}} {
			if s, ok := strings.CutPrefix(key, r[0]); ok {
				return r[1] + s, true
			}
		}
	}
	if rest, ok := strings.CutPrefix(key, "input_blocks."); ok {
		i, rest, ok := splitIndex(rest)
		if !ok || i < 1 || i >= levels*(lpb+1) {
			return "", false
		}
		level, layer := (i-1)/(lpb+1), (i-1)%(lpb+1)
		j, sub, ok := splitIndex(rest)
		switch {
		case !ok:
			return "", false
		case layer == lpb: // the downsampler
			if s, ok := strings.CutPrefix(sub, "op."); ok && j == 0 && level < levels-1 {
				return fmt.Sprintf("down_blocks.%d.downsamplers.0.conv.%s", level, s), true
			}
		case j == 0:
			if s, ok := resnetKey(sub); ok {
				return fmt.Sprintf("down_blocks.%d.resnets.%d.%s", level, layer, s), true
			}
		case j == 1 && u.CrossAttention[level] && transformerKey(sub, u.TransformerDepth[level]):
			return fmt.Sprintf("down_blocks.%d.attentions.%d.%s", level, layer, sub), true
		}
		return "", false
	}
	if rest, ok := strings.CutPrefix(key, "middle_block."); ok {
		j, sub, ok := splitIndex(rest)
		switch {
		case !ok:
		case j == 0 || j == 2:
			if s, ok := resnetKey(sub); ok {
				return fmt.Sprintf("mid_block.resnets.%d.%s", j/2, s), true
			}
		case j == 1 && transformerKey(sub, u.MidDepth):
			return "mid_block.attentions.0." + sub, true
		}
		return "", false
	}
	if rest, ok := strings.CutPrefix(key, "output_blocks."); ok {
		i, rest, ok := splitIndex(rest)
		if !ok || i >= levels*(lpb+1) {
			return "", false
		}
		level, layer := i/(lpb+1), i%(lpb+1)
		downLevel := levels - 1 - level
		j, sub, ok := splitIndex(rest)
		if !ok {
			return "", false
		}
		upsampler := level < levels-1 && layer == lpb
		if j == 0 {
			if s, ok := resnetKey(sub); ok {
				return fmt.Sprintf("up_blocks.%d.resnets.%d.%s", level, layer, s), true
			}
			return "", false
		}
		if s, ok := strings.CutPrefix(sub, "conv."); ok && upsampler {
			// output_blocks.i.1.conv without attention, .2.conv with it.
			if (j == 1 && !u.CrossAttention[downLevel]) || (j == 2 && u.CrossAttention[downLevel]) {
				return fmt.Sprintf("up_blocks.%d.upsamplers.0.conv.%s", level, s), true
			}
			return "", false
		}
		if j == 1 && u.CrossAttention[downLevel] && transformerKey(sub, u.TransformerDepth[downLevel]) {
			return fmt.Sprintf("up_blocks.%d.attentions.%d.%s", level, layer, sub), true
		}
		return "", false
	}
	return "", false
}

// vaeKey maps an LDM VAE key (without first_stage_model.) with levels
// levels to its diffusers name. full is the key as in the file.
func vaeKey(k keyset, full, key string, levels int) ([]placed, bool) {
	one := func(d string) ([]placed, bool) {
		return []placed{{VAE, d, Param{Key: full}}}, true
	}
	for _, r := range [][2]string{
		{"encoder.conv_in.", "encoder.conv_in."}, {"encoder.conv_out.", "encoder.conv_out."},
		{"encoder.norm_out.", "encoder.conv_norm_out."}, {"decoder.conv_in.", "decoder.conv_in."},
		{"decoder.conv_out.", "decoder.conv_out."}, {"decoder.norm_out.", "decoder.conv_norm_out."},
		{"quant_conv.", "quant_conv."}, {"post_quant_conv.", "post_quant_conv."},
	} {
		if s, ok := strings.CutPrefix(key, r[0]); ok {
			return one(r[1] + s)
		}
	}
	side, rest, ok := strings.Cut(key, ".")
	if !ok || (side != "encoder" && side != "decoder") {
		return nil, false
	}
	if mid, ok := strings.CutPrefix(rest, "mid."); ok {
		for _, r := range [][2]string{{"block_1.", "mid_block.resnets.0."}, {"block_2.", "mid_block.resnets.1."}} {
			if s, ok := strings.CutPrefix(mid, r[0]); ok {
				return one(side + "." + r[1] + vaeResnet(s))
			}
		}
		if s, ok := strings.CutPrefix(mid, "attn_1."); ok {
			for _, r := range [][2]string{{"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."}} {
				if t, ok := strings.CutPrefix(s, r[0]); ok {
					p := Param{Key: full, Shape: k.shape(full)}
					if r[0] != "norm." && t == "weight" && len(p.Shape) == 4 {
						p.Shape = p.Shape[:2] // a 1×1 conv kernel read as a Linear weight
					}
					return []placed{{VAE, side + ".mid_block.attentions.0." + r[1] + t, p}}, true
				}
			}
		}
		return nil, false
	}
	blocks, dir := "down_blocks", "down."
	if side == "decoder" {
		blocks, dir = "up_blocks", "up."
	}
	rest, ok = strings.CutPrefix(rest, dir)
	if !ok {
		return nil, false
	}
	i, sub, ok := splitIndex(rest)
	if !ok || i >= levels {
		return nil, false
	}
	level := i
	if side == "decoder" {
		level = levels - 1 - i // LDM numbers the decoder levels from the bottom
	}
	if b, ok := strings.CutPrefix(sub, "block."); ok {
		j, s, ok := splitIndex(b)
		if !ok {
			return nil, false
		}
		return one(fmt.Sprintf("%s.%s.%d.resnets.%d.%s", side, blocks, level, j, vaeResnet(s)))
	}
	sampler := "downsample.conv."
	if side == "decoder" {
		sampler = "upsample.conv."
	}
	if s, ok := strings.CutPrefix(sub, sampler); ok {
		return one(fmt.Sprintf("%s.%s.%d.%ssamplers.0.conv.%s", side, blocks, level, strings.TrimSuffix(blocks, "_blocks"), s))
	}
	return nil, false
}

func vaeResnet(s string) string {
	if t, ok := strings.CutPrefix(s, "nin_shortcut."); ok {
		return "conv_shortcut." + t
	}
	return s
}

// diffusersVAEKey maps a diffusers-layout VAE key, renaming diffusers' old
// attention names.
func diffusersVAEKey(key string) (string, bool) {
	for _, side := range []string{"encoder.", "decoder."} {
		if s, ok := strings.CutPrefix(key, side+"mid_block.attentions.0."); ok {
			for _, r := range [][2]string{{"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."}, {"proj_attn.", "to_out.0."}} {
				if t, ok := strings.CutPrefix(s, r[0]); ok {
					return side + "mid_block.attentions.0." + r[1] + t, true
				}
			}
		}
	}
	ok := strings.HasPrefix(key, "encoder.") || strings.HasPrefix(key, "decoder.") ||
		strings.HasPrefix(key, "quant_conv.") || strings.HasPrefix(key, "post_quant_conv.")
	return key, ok
}

func detectDiffusersVAE(k keyset) (*VAEArch, error) {
	v := &VAEArch{ScalingFactor: 0.18215}
	bad := func(format string, args ...any) (*VAEArch, error) {
		return nil, &FormatError{Reason: "VAE: " + fmt.Sprintf(format, args...)}
	}
	v.InChannels = k.dim("encoder.conv_in.weight", 1)
	v.OutChannels = k.dim("decoder.conv_out.weight", 0)
	v.LatentChannels = k.dim("post_quant_conv.weight", 0)
	levels := k.count("encoder.down_blocks.")
	if v.InChannels <= 0 || v.OutChannels <= 0 || v.LatentChannels <= 0 || levels == 0 {
		return bad("incomplete diffusers VAE (conv_in, conv_out, post_quant_conv, down_blocks)")
	}
	v.LayersPerBlock = k.count("encoder.down_blocks.0.resnets.")
	for l := range levels {
		v.BlockChannels = append(v.BlockChannels, k.dim(fmt.Sprintf("encoder.down_blocks.%d.resnets.0.conv1.weight", l), 0))
	}
	return v, nil
}

// clipKey maps a key of an OpenAI CLIP text encoder (transformers naming,
// prefix removed) to its diffusers name; old files without "text_model."
// are renamed as AUTOMATIC1111 does.
func clipKey(full, rest string, c Component) ([]placed, bool) {
	if strings.HasSuffix(rest, "position_ids") {
		return nil, true
	}
	if !strings.HasPrefix(rest, "text_model.") {
		if !strings.HasPrefix(rest, "embeddings.") && !strings.HasPrefix(rest, "encoder.") && !strings.HasPrefix(rest, "final_layer_norm.") {
			return nil, false
		}
		rest = "text_model." + rest
	}
	return []placed{{c, rest, Param{Key: full}}}, true
}

// openCLIPKey maps a key of an OpenCLIP text tower (prefix removed) to
// diffusers' CLIPTextModel names, splitting the fused in_proj into q/k/v
// row ranges. Layers at or past t.Layers (SD 2.x's unused last layer) and,
// without a projection, text_projection are ignored (nil, true).
func openCLIPKey(k keyset, full, rest string, t TextArch) ([]placed, bool, error) {
	switch rest {
	case "token_embedding.weight":
		return []placed{{t.Component, "text_model.embeddings.token_embedding.weight", Param{Key: full}}}, true, nil
	case "positional_embedding":
		return []placed{{t.Component, "text_model.embeddings.position_embedding.weight", Param{Key: full}}}, true, nil
	case "ln_final.weight", "ln_final.bias":
		return []placed{{t.Component, "text_model.final_layer_norm." + strings.TrimPrefix(rest, "ln_final."), Param{Key: full}}}, true, nil
	case "text_projection":
		if t.ProjectionDim == 0 {
			return nil, true, nil
		}
		s := k.shape(full)
		if len(s) != 2 {
			return nil, false, &FormatError{Reason: "text_projection is not a matrix", Keys: []string{full}}
		}
		return []placed{{t.Component, "text_projection.weight", Param{Key: full, Shape: []int64{s[1], s[0]}, Transpose: true}}}, true, nil
	}
	r, ok := strings.CutPrefix(rest, "transformer.resblocks.")
	if !ok {
		return nil, false, nil
	}
	layer, sub, ok := splitIndex(r)
	if !ok {
		return nil, false, nil
	}
	if layer >= t.Layers {
		return nil, true, nil
	}
	pre := fmt.Sprintf("text_model.encoder.layers.%d.", layer)
	one := func(name string) ([]placed, bool, error) {
		return []placed{{t.Component, pre + name, Param{Key: full}}}, true, nil
	}
	for _, m := range [][2]string{
		{"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."},
		{"mlp.c_fc.", "mlp.fc1."}, {"mlp.c_proj.", "mlp.fc2."},
		{"attn.out_proj.", "self_attn.out_proj."},
	} {
		if s, ok := strings.CutPrefix(sub, m[0]); ok {
			return one(m[1] + s)
		}
	}
	var kind string
	switch sub {
	case "attn.in_proj_weight":
		kind = "weight"
	case "attn.in_proj_bias":
		kind = "bias"
	default:
		return nil, false, nil
	}
	s := k.shape(full)
	d := int64(t.Hidden)
	if len(s) == 0 || s[0] != 3*d {
		return nil, false, &FormatError{Reason: fmt.Sprintf("fused attention projection of shape %v, want %d rows", s, 3*d), Keys: []string{full}}
	}
	shape := slices.Clone(s)
	shape[0] = d
	var ps []placed
	for i, n := range []string{"q_proj", "k_proj", "v_proj"} {
		ps = append(ps, placed{t.Component, pre + "self_attn." + n + "." + kind,
			Param{Key: full, Shape: slices.Clone(shape), Rows: [2]int64{int64(i) * d, int64(i+1) * d}}})
	}
	return ps, true, nil
}
