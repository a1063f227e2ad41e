// Package cli holds what the example programs share: the default model,
// the terminal progress bar, and writing PNGs.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
)

// DefaultModel returns the folder of the default model: the small model
// trained on coloured shapes that is embedded in package models, written
// to the per-user cache on first use (no download).
func DefaultModel() (string, error) {
	return models.DefaultDir()
}

// Model resolves a -model flag: "" means the default model. Whatever the
// folder, sd.Open reads its defaults from it (the default model's
// sdpipe.json gives its size and guidance scale).
func Model(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	dir, err := DefaultModel()
	if err != nil {
		return "", fmt.Errorf("default model: %w", err)
	}
	return dir, nil
}

// ProgressBar draws a request's progress on w until the channel closes.
func ProgressBar(w io.Writer, label string, ch <-chan sd.Progress) {
	const width = 30
	last := time.Time{}
	for ev := range ch {
		if ev.Step != ev.Total && time.Since(last) < 50*time.Millisecond {
			continue
		}
		last = time.Now()
		n := width * ev.Step / max(ev.Total, 1)
		fmt.Fprintf(w, "\r%s [%s%s] %d/%d %.1fs", label, strings.Repeat("=", n), strings.Repeat(" ", width-n), ev.Step, ev.Total, ev.Elapsed.Seconds())
	}
	fmt.Fprintln(w)
}

// WritePNGs writes each image of res as PNG with its parameters embedded,
// naming them by pattern: "out.png" for one image, "out-1.png"… for more.
func WritePNGs(res *sd.Result, pattern string) ([]string, error) {
	var names []string
	ext := filepath.Ext(pattern)
	base := strings.TrimSuffix(pattern, ext)
	if ext == "" {
		ext = ".png"
	}
	for i := range res.Images {
		name := base + ext
		if len(res.Images) > 1 {
			name = fmt.Sprintf("%s-%d%s", base, i+1, ext)
		}
		f, err := os.Create(name)
		if err != nil {
			return names, err
		}
		err = res.EncodePNG(f, i)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return names, err
		}
		names = append(names, name)
	}
	return names, nil
}

// Interruptible returns a context canceled by the first SIGINT.
func Interruptible() (context.Context, context.CancelFunc) {
	return signalContext()
}

// Guidance defines a -guidance flag: left out, the request gets the
// model's default (nil); given, its value, where 1 or less (0 included)
// turns classifier-free guidance off.
func Guidance() **float64 {
	g := new(*float64)
	flag.Func("guidance", "classifier-free guidance scale (1 or less, 0 included, turns it off; left out = the model's default: its sdpipe.json's, else 7.5)", func(s string) error {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		*g = &v
		return nil
	})
	return g
}
