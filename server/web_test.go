package server

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitJS polls a boolean JavaScript expression until it holds.
func waitJS(t *testing.T, c *cdp, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ok bool
		c.eval(expr, &ok)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var status string
			c.eval(`document.getElementById("status").textContent`, &status)
			t.Fatalf("timed out waiting for %s (status %q)", what, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkScreenshot decodes a screenshot, checks its width is the
// viewport's and that it is not blank, and writes it where
// SDPIPE_SCREENSHOT_DIR says (else the test's temporary folder).
func checkScreenshot(t *testing.T, b []byte, width int, name string) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if img.Bounds().Dx() != width {
		t.Errorf("%s is %d px wide, want the viewport's %d (the page spills over)", name, img.Bounds().Dx(), width)
	}
	colors := map[[3]uint32]bool{}
	for y := 0; y < img.Bounds().Dy(); y += 7 {
		for x := 0; x < img.Bounds().Dx(); x += 7 {
			r, g, b, _ := img.At(x, y).RGBA()
			colors[[3]uint32{r >> 12, g >> 12, b >> 12}] = true
		}
	}
	if len(colors) < 20 {
		t.Errorf("%s has %d colours: blank?", name, len(colors))
	}
	dir := os.Getenv("SDPIPE_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%v)", p, img.Bounds())
}

// TestWebPageDevTools uses the page as a person does, by real input events
// through the DevTools protocol, at a desktop and a phone width: no broken
// image before the first one, an empty prompt refused, typing and clicking
// Generate, a step total that stays put, download, reuse seed, copy
// parameters, the gallery, no sideways scrolling on a 390-px phone, and
// the favicon.
func TestWebPageDevTools(t *testing.T) {
	bin := lookTool(t, "chromium", "chromium", "chromium-browser", "google-chrome")
	s, ts := newServer(t, Config{ModelName: "generated-tiny", MaxSize: 256, FastSteps: 6})
	c := startCDP(t, bin)
	downloads := t.TempDir()
	c.call("Browser.setDownloadBehavior", map[string]any{"behavior": "allow", "downloadPath": downloads}, nil)
	c.call("Browser.grantPermissions", map[string]any{"permissions": []string{"clipboardReadWrite", "clipboardSanitizedWrite"}, "origin": ts.URL}, nil)

	c.viewport(1280, 800, false)
	c.navigate(ts.URL + "/")
	waitJS(t, c, "the config", `document.body.dataset.ready === "true"`)
	var broken bool
	c.eval(`(() => { const i = document.getElementById("result"); return getComputedStyle(i).display !== "none"; })()`, &broken)
	if broken {
		t.Error("the result <img> shows before there is an image (a broken-image icon)")
	}
	var sizes []string
	c.eval(`[...document.getElementById("width").options].map(o => o.value)`, &sizes)
	if len(sizes) == 0 || sizes[len(sizes)-1] != "256" {
		t.Errorf("width choices %v, want none past the server's 256", sizes)
	}
	var favicon int
	c.eval(`fetch("/favicon.ico").then(r => r.status)`, &favicon)
	if favicon != 200 {
		t.Errorf("favicon: %d", favicon)
	}

	// an empty prompt (only the placeholder) is refused on the page
	c.click("#generate")
	var status string
	c.eval(`document.getElementById("status").textContent`, &status)
	if !strings.Contains(status, "Enter a prompt") {
		t.Errorf("Generate with an empty prompt: status %q", status)
	}
	if n := admittedTotal(s); n != 0 {
		t.Errorf("an empty prompt sent %d jobs", n)
	}

	c.click("#prompt")
	c.typeText("a red circle on a blue background")
	c.click("#seed")
	c.call("Input.dispatchKeyEvent", map[string]any{"type": "rawKeyDown", "key": "End", "code": "End", "windowsVirtualKeyCode": 35}, nil)
	c.backspace(2) // "-1"
	c.typeText("7")
	c.click("#generate")
	// the status, read while it runs: the total of "step s / t" stays put
	totals := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var st struct{ State, Status string }
		c.eval(`({state: document.body.dataset.state, status: document.getElementById("status").textContent})`, &st)
		if _, tot, ok := strings.Cut(st.Status, " / "); ok && strings.HasPrefix(st.Status, "step ") {
			totals[tot] = true
		}
		if st.State == "done" || st.State == "error" || time.Now().After(deadline) {
			if st.State != "done" {
				t.Fatalf("generation: state %q, status %q", st.State, st.Status)
			}
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(totals) > 1 {
		t.Errorf("the step total changed during the run: %v", totals)
	}
	var params string
	c.eval(`document.getElementById("params").textContent`, &params)
	if !strings.Contains(params, "a red circle on a blue background") || !strings.Contains(params, "Seed: 7,") {
		t.Errorf("parameters shown: %q", params)
	}
	var dl struct{ Href, Name string }
	c.eval(`({href: document.getElementById("download").href.slice(0, 22), name: document.getElementById("download").download})`, &dl)
	if dl.Href != "data:image/png;base64," || dl.Name != "sdpipe-7.png" {
		t.Errorf("download link %+v", dl)
	}
	c.click("#download")
	// the file may show before Chromium has written it: wait for a PNG
	waitFor(t, "the downloaded PNG", func() bool {
		b, err := os.ReadFile(filepath.Join(downloads, "sdpipe-7.png"))
		return err == nil && bytes.HasPrefix(b, []byte("\x89PNG"))
	})

	// reuse the seed after changing it, and copy the parameters
	c.click("#seed")
	c.call("Input.dispatchKeyEvent", map[string]any{"type": "rawKeyDown", "key": "End", "code": "End", "windowsVirtualKeyCode": 35}, nil)
	c.backspace(1)
	c.typeText("99")
	c.click("#reuse")
	var seed string
	c.eval(`document.getElementById("seed").value`, &seed)
	if seed != "7" {
		t.Errorf("after Reuse seed the seed is %q, want 7", seed)
	}
	c.click("#copy")
	waitJS(t, c, "the copy", `document.getElementById("status").textContent === "parameters copied"`)
	var clip string
	c.eval(`navigator.clipboard.readText()`, &clip)
	if clip != params {
		t.Errorf("clipboard %q, want the parameters %q", clip, params)
	}
	// a second image, then the first picked from the gallery shows its own parameters
	c.click("#seed")
	c.call("Input.dispatchKeyEvent", map[string]any{"type": "rawKeyDown", "key": "End", "code": "End", "windowsVirtualKeyCode": 35}, nil)
	c.backspace(1)
	c.typeText("8")
	c.click("#generate")
	waitJS(t, c, "the second image", `document.getElementById("gallery").querySelectorAll("img").length === 2 && document.body.dataset.state === "done"`)
	c.click("#gallery img:last-child")
	c.eval(`document.getElementById("params").textContent`, &params)
	if !strings.Contains(params, "Seed: 7,") {
		t.Errorf("the first gallery image shows %q", params)
	}
	checkScreenshot(t, c.screenshot(), 1280, "page-desktop.png")

	// a phone: 390 CSS px, by touch
	c.viewport(390, 844, true)
	c.navigate(ts.URL + "/")
	waitJS(t, c, "the config", `document.body.dataset.ready === "true"`)
	var width int
	c.eval(`document.documentElement.scrollWidth`, &width)
	if width > 390 {
		t.Errorf("on a 390-px phone the page is %d px wide", width)
	}
	c.tap("#prompt")
	c.typeText("a lighthouse")
	c.tap("#generate")
	waitJS(t, c, "the phone's image", `document.body.dataset.state === "done"`)
	c.eval(`document.documentElement.scrollWidth`, &width)
	if width > 390 {
		t.Errorf("with an image on a 390-px phone the page is %d px wide", width)
	}
	checkScreenshot(t, c.screenshot(), 390, "page-phone.png")
}

// admittedTotal counts the generations s has seen through the job API.
func admittedTotal(s *Server) int {
	s.met.mu.Lock()
	defer s.met.mu.Unlock()
	n := 0
	for k, v := range s.met.outcomes {
		if k[0] == apiJobs {
			n += int(v)
		}
	}
	return n
}
