package sd_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/session"
)

// checkConcurrent generates all of reqs at once on m, each from its own
// goroutine, and fails the test where request i's pixels differ by more
// than 1e-5 from want[i], its pixels generated alone.
func checkConcurrent(t *testing.T, m *sd.Model, reqs []sd.Request, want [][]float32) {
	t.Helper()
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			res, err := m.Generate(t.Context(), r)
			if err != nil {
				t.Error(err)
				return
			}
			if d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), want[i]); d > 1e-5 {
				t.Errorf("request %d (%q, scheduler %q) differs by %g from the same request alone", i, r.Prompt, r.Scheduler, d)
			}
		})
	}
	wg.Wait()
}

// openBroken opens the broken model folder dir, failing the test where
// OpenFolder succeeds, and returns (and logs) its error.
func openBroken(t *testing.T, dir string) error {
	t.Helper()
	f, err := sd.OpenFolder(t.Context(), dir)
	if err == nil {
		f.Close()
		t.Fatal("OpenFolder succeeded on a broken folder")
	}
	t.Log(err)
	return err
}

// openBrokenFile opens the broken model folder dir as openBroken does and
// fails the test unless the error is a *sd.FolderError naming file.
func openBrokenFile(t *testing.T, dir, file string) error {
	t.Helper()
	err := openBroken(t, dir)
	if fe, ok := errors.AsType[*sd.FolderError](err); !ok || fe.File != file {
		t.Fatalf("error %v is not a *FolderError for %s", err, file)
	}
	return err
}

// intCheck is a size OpenFolder read from a folder and the one its models
// were generated with.
type intCheck struct {
	name      string
	got, want int
}

// checkFolder fails the test for each of checks that differs, and where f's
// UNet timestep type and per-item timesteps or its VAE scaling factor are
// not the ones given.
func checkFolder(t *testing.T, f *sd.Folder, checks []intCheck, tsType session.DType, perItem bool, scaling float64) {
	t.Helper()
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %d, want %d", ch.name, ch.got, ch.want)
		}
	}
	if got := f.UNet.TimestepType(); got != tsType {
		t.Errorf("UNet.TimestepType = %v, want %v", got, tsType)
	}
	if got := f.UNet.PerItemTimesteps(); got != perItem {
		t.Errorf("UNet.PerItemTimesteps = %v, want %v", got, perItem)
	}
	if f.ScalingFactor != scaling {
		t.Errorf("ScalingFactor = %v, want %v", f.ScalingFactor, scaling)
	}
}
