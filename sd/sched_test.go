package sd_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/sd"
)

// TestSchedulerCheckedAtOpen checks that a scheduler_config.json naming a
// scheduler the library does not run, or settings it refuses, fails at
// open with a FolderError naming the file, rather than at the first
// request.
func TestSchedulerCheckedAtOpen(t *testing.T) {
	dir := referenceCopy(t)
	const file = "scheduler/scheduler_config.json"
	for content, want := range map[string]string{
		`{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}`: `unknown scheduler: "FlowMatchEulerDiscreteScheduler"`,
		`{"num_train_timesteps": 1000}`: "_class_name",
		`{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3, "algorithm_type": "sde-dpmsolver++"}`: "solver_order",
		`{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "cosine_v9"}`:                                "beta_schedule",
	} {
		writeFile(t, dir, file, content)
		_, err := sd.OpenFolder(t.Context(), dir)
		fe, ok := errors.AsType[*sd.FolderError](err)
		if !ok || fe.File != file || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: %v, want a FolderError on %s saying %q", content, err, file, want)
		}
		if strings.Contains(want, "unknown") && !errors.Is(err, scheduler.ErrUnknownScheduler) {
			t.Errorf("%s: %v does not wrap scheduler.ErrUnknownScheduler", content, err)
		}
	}
	writeFile(t, dir, file, `{"_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}`)
	if _, err := sd.OpenFolder(t.Context(), dir); err != nil {
		t.Errorf("a known scheduler: %v", err)
	}
}
