package ckpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ReadConfigDir reads the hyper-parameters a checkpoint's tensors cannot
// tell from diffusers/transformers config files in dir, named as
// diffusers' folders name them (text_encoder/config.json, unet/config.json,
// vae/config.json, scheduler/scheduler_config.json) or flat
// (text_encoder_config.json, …): heads, activation and layer-norm epsilon
// of the text encoders, attention heads of the UNet, the VAE scaling
// factor and the prediction type. It returns nil when dir holds none.
func ReadConfigDir(dir string) (*Config, error) {
	read := func(names ...string) (map[string]json.RawMessage, error) {
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("ckpt: %w", err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, fmt.Errorf("ckpt: %s: %w", filepath.Join(dir, n), err)
			}
			return m, nil
		}
		return nil, nil
	}
	c := &Config{TextHeads: map[Component]int{}, TextAct: map[Component]string{}, TextEps: map[Component]float64{}}
	found := false
	for _, comp := range []Component{TextEncoder, TextEncoder2} {
		m, err := read(string(comp)+"/config.json", string(comp)+"_config.json")
		if err != nil {
			return nil, err
		}
		if m == nil {
			continue
		}
		found = true
		var heads int
		var act string
		var eps float64
		_ = json.Unmarshal(m["num_attention_heads"], &heads)
		_ = json.Unmarshal(m["hidden_act"], &act)
		_ = json.Unmarshal(m["layer_norm_eps"], &eps)
		if heads > 0 {
			c.TextHeads[comp] = heads
		}
		if act != "" {
			c.TextAct[comp] = act
		}
		if eps > 0 {
			c.TextEps[comp] = eps
		}
	}
	m, err := read("unet/config.json", "unet_config.json")
	if err != nil {
		return nil, err
	}
	if m != nil {
		found = true
		// diffusers uses num_attention_heads, or attention_head_dim when it
		// is null (the SD configs' historical naming): an int or a list.
		raw := m["num_attention_heads"]
		if len(raw) == 0 || string(raw) == "null" {
			raw = m["attention_head_dim"]
		}
		var one int
		var list []int
		if json.Unmarshal(raw, &one) == nil && one > 0 {
			c.UNetHeads = []int{one}
		} else if json.Unmarshal(raw, &list) == nil && len(list) > 0 {
			c.UNetHeads = list
		}
	}
	if m, err = read("vae/config.json", "vae_config.json"); err != nil {
		return nil, err
	} else if m != nil {
		found = true
		_ = json.Unmarshal(m["scaling_factor"], &c.ScalingFactor)
	}
	if m, err = read("scheduler/scheduler_config.json", "scheduler_config.json"); err != nil {
		return nil, err
	} else if m != nil {
		found = true
		_ = json.Unmarshal(m["prediction_type"], &c.Prediction)
	}
	if !found {
		return nil, nil
	}
	return c, nil
}
