package sd

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
)

// infoFile is the file in which a model folder describes itself.
const infoFile = "sdpipe.json"

// ModelInfo is what a model folder says about itself in an optional
// sdpipe.json beside model_index.json: its name, the defaults it is meant
// for, and the prompts it knows. Open reads it for any folder that has
// one; a folder without it behaves as diffusers does (512×512, or the
// UNet's sample_size × 8, at guidance 7.5). The embedded default model
// (package models) has one. ModelInfo is a plain value, safe for
// concurrent reads.
//
//	{
//	  "name": "sdpipe-shapes-64",
//	  "description": "…",
//	  "defaults": {"width": 64, "height": 64, "guidance_scale": 2.5},
//	  "prompt_template": "a [small|large] <colour> <shape> on a <colour> background",
//	  "prompt_words": {"colour": ["red", …], "shape": ["circle", …]},
//	  "example_prompts": ["a red circle on a blue background"]
//	}
type ModelInfo struct {
	// Name names the model in image metadata; "" means the folder's name.
	Name string `json:"name"`
	// Description says what the model is, for people.
	Description string `json:"description"`
	// Defaults are the model's defaults for the requests that leave a
	// field zero; a zero field here means diffusers' default.
	Defaults Defaults `json:"defaults"`
	// PromptTemplate, PromptWords and ExamplePrompts describe the prompts
	// a model trained on a small vocabulary understands: <word> is one of
	// PromptWords[word], [optional] may be left out.
	PromptTemplate string              `json:"prompt_template"`
	PromptWords    map[string][]string `json:"prompt_words"`
	ExamplePrompts []string            `json:"example_prompts"`
}

// readInfo reads the folder's sdpipe.json, if it has one.
func (in *inspector) readInfo() ModelInfo {
	var info ModelInfo
	err := readJSON(in.path(infoFile), &info)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ModelInfo{}
	case err != nil:
		in.fail(infoFile, err)
		return ModelInfo{}
	}
	d := info.Defaults
	if d.Width < 0 || d.Height < 0 || d.Width%8 != 0 || d.Height%8 != 0 || d.Width > MaxSize || d.Height > MaxSize {
		in.fail(infoFile, fmt.Errorf("defaults: size %dx%d is not a multiple of 8 up to %d", d.Width, d.Height, MaxSize))
	}
	if g := d.GuidanceScale; math.IsNaN(g) || g < 0 || g > MaxGuidance {
		in.fail(infoFile, fmt.Errorf("defaults: guidance_scale %v is not a number in [0, %d]", g, MaxGuidance))
	}
	return info
}
