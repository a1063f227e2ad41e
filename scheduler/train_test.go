package scheduler

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// TestTrainSchedules checks betas and alphas_cumprod bit for bit against
// diffusers' float32 tensors.
func TestTrainSchedules(t *testing.T) {
	dir := referenceDir(t)
	var ref map[string]json.RawMessage
	shareddir.ReadJSON(t, filepath.Join(dir, "scheduler-train-schedules.json"), &ref)
	cfg, err := LoadConfig(filepath.Join(dir, "sd-config", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range ref {
		if name == "note" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			var c struct {
				Overrides     map[string]any `json:"config_overrides"`
				Betas         []float32      `json:"betas"`
				AlphasCumprod []float32      `json:"alphas_cumprod"`
			}
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			p, err := resolve("DDIMScheduler", cfg, c.Overrides)
			if err != nil {
				t.Fatal(err)
			}
			ts := newTrainSchedule(p)
			nb, na := 0, 0
			for i := range c.Betas {
				if ts.betas[i] != c.Betas[i] {
					if nb < 5 {
						t.Errorf("betas[%d] = %v, want %v", i, ts.betas[i], c.Betas[i])
					}
					nb++
				}
				if ts.alphasCumprod[i] != c.AlphasCumprod[i] {
					if na < 5 {
						t.Errorf("alphas_cumprod[%d] = %v, want %v", i, ts.alphasCumprod[i], c.AlphasCumprod[i])
					}
					na++
				}
			}
			if nb+na > 0 {
				t.Errorf("%d betas and %d alphas_cumprod differ", nb, na)
			}
		})
	}
}
