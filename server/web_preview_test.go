package server

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/png"
	"strconv"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/sd"
)

// TestWebPagePreview drives the web page in Chromium on a server with
// TAESD previews: while a long job runs, the page's image frame shows
// TAESD's decode of the current latents (not the scaled-up latent map),
// the status counts steps, and Cancel ends the job.
func TestWebPagePreview(t *testing.T) {
	bin := lookTool(t, "chromium", "chromium", "chromium-browser", "google-chrome")
	taesd := t.TempDir()
	if err := modelgen.WriteTAESD(taesd, modelgen.TinyTAESD(), modelgen.Options{Seed: 3}); err != nil {
		t.Fatal(err)
	}
	m := openLimited(t, sd.WithTAESD(taesd), sd.WithPreviewEvery(1))
	_, ts := newServerOn(t, m, Config{})
	c := startCDP(t, bin)
	c.viewport(1280, 800, false)
	c.navigate(ts.URL + "/?prompt=long&steps=900&seed=1&width=64&height=64")
	waitJS(t, c, "the config", `document.body.dataset.ready === "true"`)
	c.click("#generate")
	waitJS(t, c, "a live preview", `document.body.dataset.state === "running" && $("result").src.startsWith("data:image/png")`)
	// the page asks for a preview once a second: the first may come before
	// TAESD's first render (the cheap map stands in until then); wait for
	// the next
	var first string
	c.eval(`$("result").src`, &first)
	waitJS(t, c, "a newer preview", `$("result").src !== `+strconv.Quote(first)+` && /^step ([5-9]|[1-9][0-9]+) \//.test($("status").textContent)`)
	checkScreenshot(t, c.screenshot(), 1280, "page-preview.png")

	var src string
	c.eval(`$("result").src`, &src)
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(src, "data:image/png;base64,"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds() != image.Rect(0, 0, 64, 64) {
		t.Errorf("preview %v, want the image's size", img.Bounds())
	}
	// TestProgressTAESDPreview's measure: the latent map scaled up is
	// piecewise bilinear (0.18 of its pixels off a line), TAESD's decode is not
	if k := kinks(img); k <= 0.4 {
		t.Errorf("%.2f of the preview's pixels off a bilinear line, want > 0.4 (TAESD's decode, not the latent map)", k)
	}

	c.click("#cancel")
	waitJS(t, c, "the job to end", `document.body.dataset.state !== "running"`)
	var status string
	c.eval(`$("status").textContent`, &status)
	if !strings.Contains(strings.ToLower(status), "cancel") && !strings.Contains(strings.ToLower(status), "interrupt") {
		t.Errorf("status after Cancel: %q, want it to say the job was canceled", status)
	}
}
