package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/examples/internal/cli"
	"github.com/sdpipe/sdpipe/sd"
)

// RunOptions configure Run.
type RunOptions struct {
	Config      Config // validated by Run
	Out         string // output folder
	Shard       Shard  // zero value: the whole grid
	Concurrency int    // requests in flight; 0 = 4
	Open        []sd.Option
	Logger      *slog.Logger // nil = silent
	// OnRecord, when set, is called once a record is durable (its image
	// renamed into place and its manifest line synced). Calls are
	// serialized.
	OnRecord func(Record)
}

// Summary counts what Run did with the items of its shard.
type Summary struct {
	Items     int // in the shard
	Skipped   int // already done and verified
	Generated int
	Failed    int
	Manifest  string
}

// params is what decides an item's image; its digest is Record.Params.
type params struct {
	Prompt, Negative string
	Seed             int64
	Generator        string
	Scheduler        string
	Steps            int
	Guidance         float64
	Width, Height    int
	ModelHash        string
}

func (p params) digest() string {
	b, _ := json.Marshal(p) // cannot fail: plain fields
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}

func itemParams(c *Config, it Item, modelHash string) params {
	return params{
		Prompt: it.Prompt, Negative: c.NegativePrompt, Seed: it.Seed, Generator: c.Generator,
		Scheduler: c.Scheduler, Steps: c.Steps, Guidance: c.Guidance,
		Width: c.Width, Height: c.Height, ModelHash: modelHash,
	}
}

// Run generates the items of the shard that the output folder does not
// already hold, appending one record per image to the shard's manifest.
// Items run concurrently, at most Concurrency in flight. When ctx ends it
// stops submitting, lets the requests in flight end (canceled), keeps
// everything already written and returns ctx's error.
func Run(ctx context.Context, o RunOptions) (sum Summary, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := o.Config
	if err := c.Validate(); err != nil {
		return sum, err
	}
	kind, _ := sd.ParseGenerator(c.Generator) // checked by Validate
	dir, err := cli.Model(c.Model)
	if err != nil {
		return sum, fmt.Errorf("grid: %w", err)
	}
	openOpts := slices.Clone(o.Open)
	if dir, err = filepath.Abs(dir); err != nil {
		return sum, fmt.Errorf("grid: %w", err)
	}
	t0 := time.Now()
	modelHash, err := sd.HashModel(dir)
	if err != nil {
		return sum, err
	}
	log.Info("model hashed", "folder", dir, "sha256", modelHash, "took", time.Since(t0).Round(time.Millisecond))

	all := c.Items()
	sum.Manifest = filepath.Join(o.Out, manifestName(o.Shard))
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return sum, fmt.Errorf("grid: %w", err)
	}
	unlock, err := lockManifest(sum.Manifest)
	if err != nil {
		return sum, err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	existing, err := readAll(o.Out, log)
	if err != nil {
		return sum, err
	}
	var mine []Item
	for _, it := range all {
		if o.Shard.Has(it.Index) {
			mine = append(mine, it)
		}
	}
	if n := cleanTemps(o.Out, mine); n > 0 {
		log.Info("removed the temporary files of an interrupted run", "files", n)
	}
	var todo []Item
	for _, it := range all {
		if !o.Shard.Has(it.Index) {
			continue
		}
		sum.Items++
		if done(o.Out, existing[it.Key], itemParams(&c, it, modelHash).digest()) {
			sum.Skipped++
			continue
		}
		todo = append(todo, it)
	}
	log.Info("grid", "items", len(all), "shard", o.Shard.String(), "in shard", sum.Items, "done", sum.Skipped, "to do", len(todo))
	if len(todo) == 0 {
		return sum, nil
	}

	m, err := sd.Open(ctx, dir, openOpts...)
	if err != nil {
		return sum, err
	}
	defer func() { err = errors.Join(err, m.Close()) }()
	app, err := openAppender(sum.Manifest)
	if err != nil {
		return sum, err
	}
	defer func() { err = errors.Join(err, app.Close()) }()

	lib := libraryVersion()
	conc := o.Concurrency
	if conc <= 0 {
		conc = 4
	}
	sem := make(chan struct{}, conc)
	// a full file system stops the run: every image left would fail too
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex // guards sum's counters, errs and OnRecord calls
		errs []error
	)
	fail := func(it Item, err error) {
		mu.Lock()
		defer mu.Unlock()
		sum.Failed++
		if len(errs) < 5 {
			errs = append(errs, fmt.Errorf("grid: item %d (%s): %w", it.Index, it.Prompt, err))
		}
		log.Error("item failed", "index", it.Index, "prompt", it.Prompt, "err", err)
		if isNoSpace(err) {
			stop(fmt.Errorf("grid: %w: stopped after %d new images (the finished ones are kept); free some space and run again to resume", err, sum.Generated))
		}
	}
	finish := func(it Item, res *sd.Result) error {
		r := record(&c, it, res, len(all), dir, modelHash, lib, o.Shard)
		r.Params = itemParams(&c, it, modelHash).digest()
		h := sha256.New()
		err := writeImage(filepath.Join(o.Out, filepath.FromSlash(it.File)), func(w io.Writer) error {
			return sd.EncodePNG(io.MultiWriter(w, h), res.Images[0], res.Infotexts[0])
		})
		if err != nil {
			return err
		}
		r.SHA256 = hex.EncodeToString(h.Sum(nil))
		if err := app.append(r); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		sum.Generated++
		log.Info("image", "index", it.Index, "file", it.File, "seed", it.Seed, "ms", r.Timings.Total)
		if o.OnRecord != nil {
			o.OnRecord(r)
		}
		return nil
	}
loop:
	for _, it := range todo {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		h, err := m.Submit(ctx, sd.Request{
			Prompt: it.Prompt, NegativePrompt: c.NegativePrompt,
			Width: c.Width, Height: c.Height, Steps: c.Steps, GuidanceScale: guidance(c.Guidance),
			Scheduler: c.Scheduler, Seed: it.Seed, Generator: kind,
		})
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				break
			}
			fail(it, err)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			<-h.Done() // canceled with ctx; a finished image is always written
			res, err := h.Wait(context.WithoutCancel(ctx))
			if err != nil {
				if ctx.Err() == nil { // else canceled by ctx: left for the next run
					fail(it, err)
				}
				return
			}
			if err := finish(it, res); err != nil {
				fail(it, err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return sum, err
	}
	if len(errs) > 0 {
		return sum, fmt.Errorf("grid: %d of %d items failed: %w", sum.Failed, len(todo), errors.Join(errs...))
	}
	return sum, nil
}

// done reports whether one of the records of an item matches its params
// and its file verifies.
func done(out string, recs []Record, digest string) bool {
	for _, r := range recs {
		if r.Params == digest && verify(out, r) == nil {
			return true
		}
	}
	return false
}

// writeImage writes an image file; tests replace it to fill the disk.
var writeImage = writeFileAtomic

// readAll reads every manifest in dir, keeping all records of each key.
func readAll(dir string, log *slog.Logger) (map[string][]Record, error) {
	names, err := manifests(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]Record{}
	for _, name := range names {
		recs, torn, err := scanManifest(name)
		if err != nil {
			return nil, err
		}
		if len(torn) > 0 {
			log.Warn("manifest lines that are not records were skipped: their items are made again", "manifest", name, "lines", torn)
		}
		for _, r := range recs {
			out[r.Key] = append(out[r.Key], r)
		}
	}
	return out, nil
}

func record(c *Config, it Item, res *sd.Result, total int, dir, modelHash, lib string, s Shard) Record {
	q := res.Request
	met := res.Metrics
	return Record{
		Key: it.Key, Index: it.Index, Total: total,
		Subject: it.Subject, Style: it.Style, Replica: it.Replica,
		Prompt: q.Prompt, NegativePrompt: q.NegativePrompt,
		BaseSeed: c.Seed, Seed: res.Seeds[0], Generator: c.Generator,
		Scheduler: q.Scheduler, Steps: q.Steps, Guidance: *q.GuidanceScale,
		Width: q.Width, Height: q.Height,
		Model: dir, ModelHash: modelHash, Library: lib,
		Shard: s.String(),
		Timings: Timings{
			Queue:   ms(met.EncodeQueue + met.DenoiseQueue + met.DecodeQueue),
			Encode:  ms(met.Encode),
			Denoise: ms(met.Denoise),
			Decode:  ms(met.Decode),
			Model:   ms(met.ModelTime()),
			Total:   ms(met.Total),
		},
		Created: time.Now().UTC().Format(time.RFC3339),
		File:    it.File,
	}
}

// guidance is a config's guidance for a request: 0 (left out) is the
// model's default.
func guidance(g float64) *float64 {
	if g == 0 {
		return nil
	}
	return &g
}
