// Command grid generates a prompt × style grid of images with lineage, the
// pattern of Metaflow's Stable Diffusion example: every subject by every
// style ("<subject> by <style>"), N images each, each with a seed derived
// from a base seed (see DeriveSeed). It writes each image as PNG with its
// AUTOMATIC1111 parameters, a JSON Lines manifest with the lineage of each
// image, and a labelled contact sheet per style.
//
//	grid run -config grid.json -out out          # or -subject/-style/-n/-seed flags
//	grid run -config grid.json -out out -shard 0/4
//	grid merge -out all shard0 shard1 shard2 shard3
//	grid search -dir all -style hokusai -prompt fox
//	grid sheet -dir all
//
// Runs resume: items whose image and manifest line exist and verify are
// skipped. Shards come from -shard i/n or the index variables of
// Kubernetes Indexed Jobs, AWS Batch array jobs and Slurm job arrays (see
// ResolveShard).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/examples/internal/cli"
	"github.com/sdpipe/sdpipe/sd"
)

const usage = `usage: grid <command> [flags]

commands:
  run     generate the grid (or a shard of it) into an output folder, resuming
  merge   combine the manifests and images of shard folders into one folder
  search  print the images of a manifest that match a prompt, subject, style or seed
  sheet   draw one labelled contact sheet per style from a manifest

run "grid <command> -h" for a command's flags`

func main() {
	ctx, stop := cli.Interruptible()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "merge":
		return cmdMerge(args[1:], stdout, stderr)
	case "search":
		return cmdSearch(args[1:], stdout, stderr)
	case "sheet":
		return cmdSheet(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("grid: unknown command %q", args[0])
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ", ") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("grid "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	var (
		subjects, styles stringList
		c                Config
	)
	config := fs.String("config", "", "JSON config file (see Config); flags set explicitly override it")
	fs.Var(&subjects, "subject", "a subject (repeatable)")
	fs.Var(&styles, "style", "a style (repeatable)")
	fs.StringVar(&c.Model, "model", "", "model folder (diffusers ONNX layout); empty = the default model")
	fs.StringVar(&c.Template, "template", "", `prompt template with {subject} and {style} (default "`+DefaultTemplate+`")`)
	fs.IntVar(&c.Images, "n", 1, "images per subject × style")
	fs.Int64Var(&c.Seed, "seed", 0, "base seed; each item's seed derives from it, the subject, the style and the replica")
	fs.StringVar(&c.NegativePrompt, "negative", "", "negative prompt")
	fs.IntVar(&c.Steps, "steps", 0, "denoising steps (0 = 50)")
	fs.Float64Var(&c.Guidance, "guidance", 0, "guidance scale (0 = the model's default: 7.5, the default model's own)")
	fs.StringVar(&c.Scheduler, "scheduler", "", "scheduler (diffusers class or A1111 sampler name); empty = the model's")
	fs.IntVar(&c.Width, "width", 0, "width (0 = the model's default)")
	fs.IntVar(&c.Height, "height", 0, "height (0 = the model's default)")
	fs.StringVar(&c.Generator, "generator", "numpy", "random generator: numpy or torch")
	out := fs.String("out", "grid-out", "output folder")
	conc := fs.Int("concurrency", 4, "requests in flight")
	shard := fs.String("shard", "", "run shard i/n only (default: from the Kubernetes, AWS Batch or Slurm array index, else all)")
	shards := fs.Int("shards", 0, "shard count for JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX (default $GRID_SHARDS)")
	mode := fs.String("mode", "throughput", "engine mode: latency or throughput")
	threads := fs.Int("threads", 0, "intra-op threads per model (0 = the mode's choice)")
	sheets := fs.Bool("sheet", true, "draw the contact sheets after an unsharded run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("grid: run: unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *config != "" {
		file, err := LoadConfig(*config)
		if err != nil {
			return err
		}
		c = overlay(file, c, set)
	}
	if len(subjects) > 0 {
		c.Subjects = subjects
	}
	if len(styles) > 0 {
		c.Styles = styles
	}
	if err := c.Validate(); err != nil {
		return err
	}
	s, err := ResolveShard(*shard, *shards, os.Getenv)
	if err != nil {
		return err
	}
	var opts []sd.Option
	switch *mode {
	case "latency":
		opts = append(opts, sd.WithMode(sd.Latency))
	case "throughput":
		opts = append(opts, sd.WithMode(sd.Throughput))
	default:
		return fmt.Errorf("grid: run: unknown mode %q", *mode)
	}
	if *threads > 0 {
		for _, comp := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder} {
			opts = append(opts, sd.WithThreads(comp, *threads))
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	start := time.Now()
	sum, err := Run(ctx, RunOptions{
		Config: c, Out: *out, Shard: s, Concurrency: *conc,
		Open: append(opts, sd.WithoutVAEEncoder()), Logger: log,
	})
	fmt.Fprintf(stdout, "%d items in shard %q: %d done before, %d generated, %d failed in %.1fs; manifest %s\n",
		sum.Items, s.String(), sum.Skipped, sum.Generated, sum.Failed, time.Since(start).Seconds(), sum.Manifest)
	if err != nil {
		return err
	}
	if *sheets && s.Count <= 1 {
		files, err := Sheets(*out)
		for _, f := range files {
			fmt.Fprintln(stdout, "sheet", f)
		}
		return err
	}
	return nil
}

// overlay returns the file's config with the fields whose flags were set
// explicitly taken from flags.
func overlay(file, flags Config, set map[string]bool) Config {
	c := file
	for name, dst := range map[string]func(){
		"model":     func() { c.Model = flags.Model },
		"template":  func() { c.Template = flags.Template },
		"n":         func() { c.Images = flags.Images },
		"seed":      func() { c.Seed = flags.Seed },
		"negative":  func() { c.NegativePrompt = flags.NegativePrompt },
		"steps":     func() { c.Steps = flags.Steps },
		"guidance":  func() { c.Guidance = flags.Guidance },
		"scheduler": func() { c.Scheduler = flags.Scheduler },
		"width":     func() { c.Width = flags.Width },
		"height":    func() { c.Height = flags.Height },
		"generator": func() { c.Generator = flags.Generator },
	} {
		if set[name] {
			dst()
		}
	}
	return c
}

func cmdMerge(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("merge", stderr)
	out := fs.String("out", "", "merged output folder (required)")
	sheets := fs.Bool("sheet", true, "draw the contact sheets of the merged folder")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() == 0 {
		return errors.New("grid: merge: want -out DIR and at least one shard folder or manifest")
	}
	sum, err := Merge(*out, fs.Args())
	fmt.Fprintf(stdout, "merged %d records (%d images copied, %d duplicates) into %s", sum.Records, sum.Copied, sum.Duplicate, filepath.Join(*out, "manifest.jsonl"))
	if sum.Total > 0 {
		fmt.Fprintf(stdout, "; %d of %d grid items missing", sum.Missing, sum.Total)
	}
	fmt.Fprintln(stdout)
	if err != nil {
		return err
	}
	if *sheets {
		files, err := Sheets(*out)
		for _, f := range files {
			fmt.Fprintln(stdout, "sheet", f)
		}
		return err
	}
	return nil
}

func cmdSearch(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("search", stderr)
	var q Query
	dir := fs.String("dir", "grid-out", "output folder holding the manifest(s)")
	fs.StringVar(&q.Prompt, "prompt", "", "substring of the prompt (case-insensitive)")
	fs.StringVar(&q.Subject, "subject", "", "substring of the subject (case-insensitive)")
	fs.StringVar(&q.Style, "style", "", "style (case-insensitive)")
	fs.Int64Var(&q.Seed, "seed", -1, "seed (-1 = any)")
	asJSON := fs.Bool("json", false, "print the matching manifest records as JSON Lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	recs, err := Search(*dir, q)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for _, r := range recs {
		if *asJSON {
			if err := enc.Encode(r); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(stdout, "%s\tseed %d\t%s\n", filepath.Join(*dir, filepath.FromSlash(r.File)), r.Seed, r.Prompt)
	}
	if len(recs) == 0 {
		fmt.Fprintln(stderr, "no match")
	}
	return nil
}

func cmdSheet(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("sheet", stderr)
	dir := fs.String("dir", "grid-out", "output folder holding the manifest(s)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files, err := Sheets(*dir)
	for _, f := range files {
		fmt.Fprintln(stdout, "sheet", f)
	}
	return err
}
