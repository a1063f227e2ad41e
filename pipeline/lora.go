package pipeline

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gorgonia.org/tensor"
)

// LoRA applies a LoRA to one request: Name is what the model's LoRA
// library knows it by (AUTOMATIC1111: the file name without extension),
// Multiplier its strength (1 is the LoRA as trained).
type LoRA struct {
	Name       string
	Multiplier float64
}

// LoRADenoiser is a Denoiser that applies LoRAs per batch row without
// rebuilding anything: rows[i] lists the LoRAs of row i of sample (nil for
// none), so that requests with different LoRAs share one call. CheckLoRA
// reports whether a LoRA name can be applied (it is called when a request
// is submitted). Implementations must be safe for concurrent use.
type LoRADenoiser interface {
	Denoiser
	PredictLoRA(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense, rows [][]LoRA) (*tensor.Dense, error)
	CheckLoRA(name string) error
}

// LoRAEncoder is an Encoder that applies LoRAs to every sequence of a call.
type LoRAEncoder interface {
	Encoder
	EncodeLoRA(ctx context.Context, ids []int32, batch int, loras []LoRA) (*tensor.Dense, error)
}

// loraTag matches AUTOMATIC1111's extra-network syntax for LoRAs:
// <lora:name>, <lora:name:multiplier> (and <lyco:…>, its alias).
var loraTag = regexp.MustCompile(`<(lora|lyco):([^:>]+)(?::([^>]*))?>`)

// ExtractLoRAs removes the <lora:name:multiplier> tags from prompt (a
// missing multiplier means 1) and returns the rest and the LoRAs, in order.
func ExtractLoRAs(prompt string) (string, []LoRA, error) {
	var loras []LoRA
	var err error
	rest := loraTag.ReplaceAllStringFunc(prompt, func(tag string) string {
		m := loraTag.FindStringSubmatch(tag)
		l := LoRA{Name: strings.TrimSpace(m[2]), Multiplier: 1}
		if m[3] != "" {
			v, perr := strconv.ParseFloat(strings.TrimSpace(m[3]), 64)
			if perr != nil && err == nil {
				err = fmt.Errorf("%s: multiplier %q is not a number (separate text-encoder and UNet multipliers are not supported)", tag, m[3])
			}
			l.Multiplier = v
		}
		loras = append(loras, l)
		return ""
	})
	return rest, loras, err
}

// requestLoRAs returns the LoRAs of r: r.LoRAs, then the prompt's tags.
func requestLoRAs(r *Request) ([]LoRA, error) {
	_, tagged, err := ExtractLoRAs(r.Prompt)
	if err != nil {
		return nil, invalid("Prompt", "%v", err)
	}
	all := append(slices.Clone(r.LoRAs), tagged...)
	for _, l := range all {
		if l.Name == "" {
			return nil, invalid("LoRAs", "a LoRA without a name")
		}
		if math.IsNaN(l.Multiplier) || math.IsInf(l.Multiplier, 0) || math.Abs(l.Multiplier) > 100 {
			return nil, invalid("LoRAs", "%s: multiplier %v is not a number in [-100, 100]", l.Name, l.Multiplier)
		}
	}
	return all, nil
}

// checkLoRAs validates the LoRAs of a request against the components.
func (p *Pipeline) checkLoRAs(loras []LoRA) error {
	if len(loras) == 0 {
		return nil
	}
	if p.c.Added {
		return invalid("LoRAs", "per-request LoRAs are not supported for models with added conditioning (SDXL)")
	}
	d, ok := p.c.UNet.(LoRADenoiser)
	_, encOK := p.c.TextEncoder.(LoRAEncoder)
	if !ok || !encOK {
		return invalid("LoRAs", "this model cannot apply LoRAs per request (open it with a LoRA folder)")
	}
	for _, l := range loras {
		if err := d.CheckLoRA(l.Name); err != nil {
			return invalid("LoRAs", "%v", err)
		}
	}
	return nil
}

// stripLoRAs returns prompt without its LoRA tags.
func stripLoRAs(prompt string) string {
	rest, _, _ := ExtractLoRAs(prompt)
	return rest
}

// loraRows returns each UNet row's LoRAs (uncond rows first when guidance
// is on, in the batch's order), or nil when no job of the batch has any.
func (b *unetBatch) loraRows() [][]LoRA {
	some := false
	for _, j := range b.jobs {
		some = some || len(j.req.LoRAs) > 0
	}
	if !some {
		return nil
	}
	var rows [][]LoRA
	k := 1
	if b.guided {
		k = 2
	}
	for range k {
		for m := range b.items {
			rows = append(rows, b.job[m].req.LoRAs)
		}
	}
	return rows
}
