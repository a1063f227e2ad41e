//go:build integration

package sd_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	. "github.com/sdpipe/sdpipe/sd"
)

// TestOpenRewrittenIntegration opens $SD_MODEL_DIR twice with the default
// rewrites (the second time from the cache) and a warm-up at
// $PERF_WARMUP_SIZE (256) pixels, and prints the load reports.
func TestOpenRewrittenIntegration(t *testing.T) {
	dir := os.Getenv("SD_MODEL_DIR")
	if dir == "" {
		t.Skip("SD_MODEL_DIR not set")
	}
	cache := t.TempDir()
	for _, run := range []string{"first", "cached"} {
		start := time.Now()
		f, err := OpenFolder(t.Context(), dir, WithRewrites(), WithRewriteCache(cache), WithoutVAEEncoder(),
			WithWarmup(Warmup{Width: 256, Height: 256, MaxCalls: 3}))
		if err != nil {
			t.Fatal(err)
		}
		rep := f.Load()
		fmt.Printf("OPEN %s %s in %v\n  open %v\n  rewrites %v\n  warm-up %v\n  calls %v\n", run, dir, time.Since(start).Round(time.Millisecond),
			rep.Open, rep.Rewrites, rep.Warmup, rep.WarmupCalls)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
