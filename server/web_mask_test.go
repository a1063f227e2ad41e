package server

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWebPageMask uploads an image through the page's file input, paints
// a stroke across its middle with the mouse and generates: the page sends
// the painted mask, and the image comes back untouched far from the
// stroke and changed under it.
func TestWebPageMask(t *testing.T) {
	bin := lookTool(t, "chromium", "chromium", "chromium-browser", "google-chrome")
	_, ts := newServer(t, Config{ModelName: "generated-tiny", MaxSize: 256, FastSteps: 6})
	c := startCDP(t, bin)
	c.viewport(1280, 800, false)
	c.navigate(ts.URL + "/")
	waitJS(t, c, "the config", `document.body.dataset.ready === "true"`)

	img, _ := inpaintImages(image.Rectangle{}, false)
	file := filepath.Join(t.TempDir(), "photo.png")
	if err := os.WriteFile(file, pngBytes(t, img), 0o644); err != nil {
		t.Fatal(err)
	}
	var doc struct{ Root struct{ NodeID int } }
	c.call("DOM.getDocument", map[string]any{}, &doc)
	var input struct{ NodeID int }
	c.call("DOM.querySelector", map[string]any{"nodeId": doc.Root.NodeID, "selector": "#init"}, &input)
	c.call("DOM.setFileInputFiles", map[string]any{"nodeId": input.NodeID, "files": []string{file}}, nil)
	waitJS(t, c, "the image in the painter", `!document.getElementById("paint").hidden && document.getElementById("maskView").width === 64`)

	// a stroke across the middle, with the widest brush
	c.eval(`(() => { const b = document.getElementById("brush"); b.value = b.max; return true; })()`, nil)
	var r struct{ X, Y, W, H float64 }
	c.eval(`(() => { const v = document.getElementById("maskView"); v.scrollIntoView({block: "center"}); const r = v.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; })()`, &r)
	y := r.Y + r.H/2
	c.call("Input.dispatchMouseEvent", map[string]any{"type": "mouseMoved", "x": r.X + r.W/4, "y": y}, nil)
	c.call("Input.dispatchMouseEvent", map[string]any{"type": "mousePressed", "x": r.X + r.W/4, "y": y, "button": "left", "buttons": 1, "clickCount": 1}, nil)
	for i := 1; i <= 10; i++ {
		c.call("Input.dispatchMouseEvent", map[string]any{"type": "mouseMoved", "x": r.X + r.W/4 + float64(i)*r.W/20, "y": y, "button": "left", "buttons": 1}, nil)
	}
	c.call("Input.dispatchMouseEvent", map[string]any{"type": "mouseReleased", "x": r.X + 3*r.W/4, "y": y, "button": "left", "buttons": 0, "clickCount": 1}, nil)
	var painted bool
	c.eval(`init !== null && init.painted`, &painted)
	if !painted {
		t.Fatal("the stroke did not paint the mask")
	}

	c.eval(`(() => { for (const id of ["width", "height"]) document.getElementById(id).value = "64"; return true; })()`, nil)
	c.click("#prompt")
	c.typeText("a red circle")
	c.click("#generate")
	waitJS(t, c, "the inpainted image", `document.body.dataset.state === "done" || document.body.dataset.state === "error"`)
	var st struct{ State, Status, Src string }
	c.eval(`({state: document.body.dataset.state, status: document.getElementById("status").textContent, src: selected ? selected.src : ""})`, &st)
	if st.State != "done" {
		t.Fatalf("generation: %s: %s", st.State, st.Status)
	}
	checkScreenshot(t, c.screenshot(), 1280, "page-mask.png")
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(st.Src, "data:image/png;base64,"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	// the stroke: rows 32 ± the brush's radius in image pixels; the blur
	// (σ 4, radius 10) reaches further
	rad := 64 * 64 / r.W / 2
	band := image.Rect(0, int(32-rad)-12, 64, int(32+rad)+13)
	in, out := changed(got, img, band)
	if out != 0 || in < 8 {
		t.Errorf("%d levels changed away from the stroke (want 0), %d under it (want a change)", out, in)
	}
}
