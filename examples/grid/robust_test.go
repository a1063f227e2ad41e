package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestSecondRunRefused is #16 defect 5: two runs on one output folder both
// reported success and corrupted the manifest. The second run of a shard
// now refuses clearly while the first holds the folder, and the first one
// ends as a clean run does.
func TestSecondRunRefused(t *testing.T) {
	model, ref := setup(t)
	out := t.TempDir()
	o := testOptions(t, model, out, Shard{})
	first := make(chan struct{})
	release := make(chan struct{})
	var once atomic.Bool
	o.OnRecord = func(Record) {
		if once.CompareAndSwap(false, true) {
			close(first)
			<-release // hold the run while the second one tries
		}
	}
	done := make(chan error, 1)
	go func() { _, err := Run(t.Context(), o); done <- err }()
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("the first run ended early: %v", err)
	}
	second := testOptions(t, model, out, Shard{})
	_, err := Run(t.Context(), second)
	close(release)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Errorf("a second run on the same folder: %v, want ErrLocked naming the first run's process", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the first run: %v", err)
	}
	if d := cmp.Diff(hashes(t, ref), hashes(t, out)); d != "" {
		t.Errorf("the first run differs from a clean run (-clean +got):\n%s", d)
	}
	if got := len(lines(t, filepath.Join(out, "manifest.jsonl"))); got != 8 {
		t.Errorf("%d manifest lines, want 8", got)
	}
	// once it is done, a run on the folder goes again (and finds all done)
	sum, err := Run(t.Context(), second)
	if err != nil || sum.Skipped != 8 {
		t.Errorf("a run after the first: %+v %v", sum, err)
	}
}

// TestTornLinesAnywhere is #16 defect 5: a torn line in the middle of a
// manifest made every later run fail with a parse error. Now the line is
// skipped, its item made again, and leftover temporary files of a killed
// run are removed.
func TestTornLinesAnywhere(t *testing.T) {
	model, ref := setup(t)
	out := t.TempDir()
	if err := os.CopyFS(out, os.DirFS(ref)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(out, "manifest.jsonl")
	ls := lines(t, path)
	// tear line 3 in the middle (as an interleaved append does) and glue
	// line 6 to a fragment
	ls[2] = ls[2][:len(ls[2])/2]
	ls[5] = `{"key":"x","ind` + ls[5]
	if err := os.WriteFile(path, []byte(strings.Join(ls, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := readManifest(path)
	if err != nil || len(recs) != 6 {
		t.Fatalf("readManifest of a manifest with 2 torn lines: %d records, %v; want 6", len(recs), err)
	}
	cfg := testConfig(model)
	items := cfg.Items()
	temp := filepath.Join(out, filepath.FromSlash(items[0].File))
	temp = filepath.Join(filepath.Dir(temp), ".tmp-"+filepath.Base(temp)+"-123456")
	if err := os.WriteFile(temp, []byte("half a png"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := Run(t.Context(), testOptions(t, model, out, Shard{}))
	if err != nil {
		t.Fatalf("resume over torn lines: %v", err)
	}
	if sum.Skipped != 6 || sum.Generated != 2 {
		t.Errorf("%+v, want the 2 items of the torn lines made again", sum)
	}
	if d := cmp.Diff(hashes(t, ref), hashes(t, out)); d != "" {
		t.Errorf("resumed run differs (-clean +got):\n%s", d)
	}
	if _, err := os.Stat(temp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftover temporary file is still there: %v", err)
	}
}

// TestNoSpaceStops is #16 defect 5: on a full disk the grid failed every
// remaining image, one by one. It now stops at the first ENOSPC, keeps
// what it finished, and the next run resumes.
func TestNoSpaceStops(t *testing.T) {
	model, ref := setup(t)
	out := t.TempDir()
	var writes atomic.Int64
	writeImage = func(path string, write func(io.Writer) error) error {
		if writes.Add(1) > 2 {
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
		}
		return writeFileAtomic(path, write)
	}
	defer func() { writeImage = writeFileAtomic }()
	o := testOptions(t, model, out, Shard{})
	o.Concurrency = 1
	sum, err := Run(t.Context(), o)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "run again to resume") {
		t.Fatalf("a full disk: %v, want ENOSPC with what to do", err)
	}
	if sum.Generated != 2 || sum.Failed != 1 {
		t.Errorf("%+v: want 2 made and the run stopped at the first failure", sum)
	}
	writeImage = writeFileAtomic
	sum, err = Run(t.Context(), o)
	if err != nil || sum.Skipped != 2 || sum.Generated != 6 {
		t.Errorf("the resumed run: %+v %v", sum, err)
	}
	if d := cmp.Diff(hashes(t, ref), hashes(t, out)); d != "" {
		t.Errorf("resumed run differs (-clean +got):\n%s", d)
	}
}

// TestNoSpaceTmpfs fills a real small tmpfs (when the test may mount one).
func TestNoSpaceTmpfs(t *testing.T) {
	model, _ := setup(t)
	out := t.TempDir()
	if err := syscall.Mount("tmpfs", out, "tmpfs", 0, "size=48k"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): TestNoSpaceStops covers it with a fake writer", err)
	}
	defer syscall.Unmount(out, 0)
	o := testOptions(t, model, out, Shard{})
	o.Concurrency = 1
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	sum, err := Run(ctx, o)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a full tmpfs: %+v %v, want ENOSPC", sum, err)
	}
	if sum.Failed > 1 || sum.Generated == 8 {
		t.Errorf("%+v: want the run stopped at the first failure", sum)
	}
	t.Logf("48 KiB tmpfs: %+v: %v", sum, err)
}
