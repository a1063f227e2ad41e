package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
)

// Request fields the service cannot honour are reported, never swallowed.
//
// AUTOMATIC1111's clients send their whole request model, most fields at
// its defaults: a field at A1111's default (or null) is what the service
// does anyway, and is accepted. A field set to anything else that the
// service does not do (hires fix, face restoration, scripts, …), and a field A1111 does not have, is refused
// with 400 naming every such field, so that a client never gets something
// other than what it asked for without a sign of it.
//
// Leniency: a server started with Config.Lenient, or a request with the
// header "Sdpipe-Lenient: true", ignores those fields instead and lists
// them in the response's info JSON under "warnings" (and in the
// Sdpipe-Warnings response header).

// lenientHeader is the request header that asks for leniency.
const lenientHeader = "Sdpipe-Lenient"

// fieldRule says when a field's value is one the service does (or does
// anyway, being A1111's default), and what to say otherwise.
type fieldRule struct {
	ok  func(v json.RawMessage, in *a1111Request) bool
	why string
}

// honoured fields are read by a1111Spec; their values are checked there.
func honoured() fieldRule {
	return fieldRule{ok: func(json.RawMessage, *a1111Request) bool { return true }}
}

// ignored fields have no effect on a service (where A1111 saves files,
// which this service never does, or options that only its UI reads).
func ignored() fieldRule { return honoured() }

// isDefault accepts null and the given JSON values.
func isDefault(why string, defaults ...string) fieldRule {
	return fieldRule{why: why, ok: func(v json.RawMessage, _ *a1111Request) bool {
		return isNull(v) || slices.ContainsFunc(defaults, func(d string) bool { return jsonEqual(v, d) })
	}}
}

// whenOff accepts any value while the feature the field belongs to is off.
func whenOff(why string, off func(in *a1111Request) bool) fieldRule {
	return fieldRule{why: why, ok: func(v json.RawMessage, in *a1111Request) bool { return off(in) }}
}

func isNull(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	return len(v) == 0 || string(v) == "null"
}

// jsonEqual reports whether two JSON values are equal as values (1 and
// 1.0 are).
func jsonEqual(a json.RawMessage, b string) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	if fx, ok := x.(float64); ok {
		fy, ok := y.(float64)
		return ok && fx == fy
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

var (
	hiresOff   = func(in *a1111Request) bool { return !in.EnableHR }
	noMask     = func(in *a1111Request) bool { return in.Mask == "" }
	noRefiner  = func(in *a1111Request) bool { return in.RefinerCheckpoint == "" }
	hiresWhy   = "hires fix (enable_hr) is not supported: generate at the size you want, or upscale elsewhere"
	refinerWhy = "a refiner is not supported"
)

// a1111Rules covers every field of A1111's txt2img and img2img request
// models (modules/api/models.py and the processing classes they are made
// from, A1111 1.10), plus this service's own.
var a1111Rules = map[string]fieldRule{
	// what the service does
	"prompt": honoured(), "negative_prompt": honoured(), "seed": honoured(),
	"subseed": honoured(), "subseed_strength": honoured(),
	"sampler_name": honoured(), "sampler_index": honoured(), "scheduler": honoured(),
	"batch_size": honoured(), "n_iter": honoured(), "steps": honoured(), "cfg_scale": honoured(),
	"width": honoured(), "height": honoured(), "denoising_strength": honoured(),
	"init_images": honoured(), "send_images": honoured(), "force_task_id": honoured(),
	"override_settings": honoured(), "eta": honoured(),
	"quality": honoured(), // this service's fast/quality switch

	// nothing to do on a service, or only a hint
	"do_not_save_samples": ignored(), "do_not_save_grid": ignored(),
	"override_settings_restore_afterwards": ignored(), // overrides never outlive their request here
	"disable_extra_networks":               ignored(), "comments": ignored(), "user": ignored(),
	"image_cfg_scale":  ignored(), // read by InstructPix2Pix models only, as in A1111
	"sampler_index_hr": ignored(),

	// A1111's defaults are what the service does
	"save_images":              isDefault("saving images on the server is not supported; the response holds them", "false"),
	"styles":                   isDefault("prompt styles are not supported (GET /sdapi/v1/prompt-styles lists none)", "[]"),
	"restore_faces":            isDefault("face restoration is not supported", "false"),
	"tiling":                   isDefault("tiling is not supported", "false"),
	"enable_hr":                isDefault(hiresWhy, "false"),
	"seed_resize_from_h":       isDefault("resizing the seed (seed_resize_from_h) is not supported", "-1", "0"),
	"seed_resize_from_w":       isDefault("resizing the seed (seed_resize_from_w) is not supported", "-1", "0"),
	"s_min_uncond":             isDefault("s_min_uncond (negative guidance minimum sigma) is not supported", "0"),
	"s_churn":                  isDefault("s_churn is not supported", "0"),
	"s_tmax":                   isDefault("s_tmax is not supported", "0"),
	"s_tmin":                   isDefault("s_tmin is not supported", "0"),
	"s_noise":                  isDefault("s_noise is not supported", "1"),
	"script_name":              isDefault("scripts are not supported", `""`),
	"script_args":              isDefault("scripts are not supported", "[]"),
	"alwayson_scripts":         isDefault("scripts (alwayson_scripts, e.g. ControlNet) are not supported", "{}"),
	"refiner_checkpoint":       isDefault(refinerWhy, `""`, `"None"`),
	"refiner_switch_at":        whenOff(refinerWhy, noRefiner),
	"infotext":                 isDefault("infotext (parameters taken from an infotext) is not supported: send the fields", `""`),
	"token_merging_ratio":      isDefault("token merging is not supported", "0"),
	"token_merging_ratio_hr":   isDefault("token merging is not supported", "0"),
	"resize_mode":              isDefault("only resize_mode 0 (just resize) is supported", "0"),
	"initial_noise_multiplier": isDefault("initial_noise_multiplier is not supported", "1"),
	"include_init_images":      isDefault("include_init_images is not supported", "false"),
	"latent_mask":              isDefault("latent_mask is not supported", `""`),

	// hires fix: its fields are sent with every request, and ignored while it is off
	"firstphase_width": whenOff(hiresWhy, hiresOff), "firstphase_height": whenOff(hiresWhy, hiresOff),
	"hr_scale": whenOff(hiresWhy, hiresOff), "hr_upscaler": whenOff(hiresWhy, hiresOff),
	"hr_second_pass_steps": whenOff(hiresWhy, hiresOff), "hr_resize_x": whenOff(hiresWhy, hiresOff),
	"hr_resize_y": whenOff(hiresWhy, hiresOff), "hr_checkpoint_name": whenOff(hiresWhy, hiresOff),
	"hr_sampler_name": whenOff(hiresWhy, hiresOff), "hr_scheduler": whenOff(hiresWhy, hiresOff),
	"hr_prompt": whenOff(hiresWhy, hiresOff), "hr_negative_prompt": whenOff(hiresWhy, hiresOff),
	"hr_cfg": whenOff(hiresWhy, hiresOff), "hr_distilled_cfg": whenOff(hiresWhy, hiresOff),
	"hr_additional_modules": whenOff(hiresWhy, hiresOff),

	// inpainting: read by a1111Spec with a mask, sent at their defaults
	// without one
	"mask": honoured(), "mask_blur": honoured(), "mask_blur_x": honoured(), "mask_blur_y": honoured(),
	"inpainting_fill": honoured(), "inpaint_full_res": honoured(),
	"inpaint_full_res_padding": honoured(), "inpainting_mask_invert": honoured(),
	"mask_round": {why: "mask_round false is not supported: the latent mask is always rounded", ok: func(v json.RawMessage, in *a1111Request) bool {
		return noMask(in) || isNull(v) || jsonEqual(v, "true")
	}},
}

// overrideRule is a setting of override_settings the service has, with
// the values it runs.
var overrideRules = map[string]fieldRule{
	"sd_model_checkpoint":               honoured(), // checked against the models the server has
	"CLIP_stop_at_last_layers":          honoured(), // clip skip
	"sd_vae":                            isDefault("only the model's own VAE is available", `"Automatic"`, `"None"`),
	"randn_source":                      isDefault("the server draws noise as A1111's CPU source does", `"CPU"`),
	"eta_noise_seed_delta":              isDefault("eta_noise_seed_delta is not supported", "0"),
	"samples_format":                    isDefault("the A1111 endpoints return PNG", `"png"`),
	"eta_ddim":                          honoured(),
	"eta_ancestral":                     isDefault("eta for ancestral samplers is fixed at 1", "1"),
	"always_discard_next_to_last_sigma": isDefault("not supported", "false"),
	"sd_checkpoint_hash":                ignored(),
	"live_previews_enable":              ignored(),
	"show_progress_every_n_steps":       ignored(),
	"samples_save":                      isDefault("saving images on the server is not supported", "false"),
	"save_images_add_number":            ignored(),
	"enable_pnginfo":                    isDefault("PNG info is always written", "true"),
}

// a1111Problems returns the fields of in that the service cannot honour,
// each as "field: why", sorted.
func a1111Problems(in *a1111Request, img2img bool) []string {
	var out []string
	for k, v := range in.raw {
		rule, ok := a1111Rules[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: not a field of A1111's %s request", k, map[bool]string{false: "txt2img", true: "img2img"}[img2img]))
		case !rule.ok(v, in):
			out = append(out, k+": "+rule.why)
		}
	}
	for k, v := range in.OverrideSettings {
		rule, ok := overrideRules[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("override_settings.%s: this setting is not supported", k))
		case !rule.ok(v, in):
			out = append(out, "override_settings."+k+": "+rule.why)
		}
	}
	sort.Strings(out)
	return out
}

// checkA1111Fields refuses in's unsupported fields, or returns them as
// warnings when the request (nil: one checked before) or the server is
// lenient.
func (s *Server) checkA1111Fields(r *http.Request, in *a1111Request, img2img bool) ([]string, error) {
	problems := a1111Problems(in, img2img)
	if len(problems) == 0 {
		return nil, nil
	}
	// r is nil for a job from the shared queue, checked when it was submitted
	if s.cfg.Lenient || r == nil || strings.EqualFold(r.Header.Get(lenientHeader), "true") {
		for i := range problems {
			problems[i] += " (ignored)"
		}
		return problems, nil
	}
	param, _, _ := strings.Cut(problems[0], ":")
	return nil, badRequest(param, "unsupported fields (send them at A1111's defaults, leave them out, or ask for leniency with the %s: true header): %s", lenientHeader, strings.Join(problems, "; "))
}
