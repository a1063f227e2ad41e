package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image/color"
	"image/jpeg"
	"image/png"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	xwebp "golang.org/x/image/webp"
)

// sseEvents reads a server-sent event stream into (event, data) pairs.
func sseEvents(t *testing.T, body []byte) [][2]string {
	t.Helper()
	var out [][2]string
	var ev, data string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" {
				out = append(out, [2]string{ev, data})
			}
			ev, data = "", ""
		case strings.HasPrefix(line, "event: "):
			ev = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data += line[len("data: "):]
		}
	}
	return out
}

func TestOpenAIStream(t *testing.T) {
	_, ts := newServer(t, Config{ModelName: "tiny"})
	r := post(t, ts.URL+"/v1/images/generations", `{"prompt":"a lighthouse","size":"64x64","quality":"custom","stream":true,"partial_images":2,"n":2,"seed":3,"model":"gpt-image-1","negative_prompt":"","steps":0}`)
	if r.code != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s %s", r.code, r.header.Get("Content-Type"), r.body)
	}
	evs := sseEvents(t, r.body)
	var partials, completed int
	for _, e := range evs {
		var d struct {
			Type              string
			B64JSON           string `json:"b64_json"`
			PartialImageIndex int    `json:"partial_image_index"`
			Size              string
		}
		if err := json.Unmarshal([]byte(e[1]), &d); err != nil {
			t.Fatalf("event %q: %v", e[0], err)
		}
		if d.Type != e[0] {
			t.Errorf("event %q has type %q", e[0], d.Type)
		}
		switch d.Type {
		case "image_generation.partial_image":
			if d.PartialImageIndex != partials {
				t.Errorf("partial_image_index %d, want %d", d.PartialImageIndex, partials)
			}
			partials++
		case "image_generation.completed":
			completed++
			if img, _ := decodePNG(t, d.B64JSON); img.Bounds().Dx() != 64 || d.Size != "64x64" {
				t.Errorf("completed image %v size %q", img.Bounds(), d.Size)
			}
		default:
			t.Errorf("unexpected event %q: %s", d.Type, e[1])
		}
	}
	if partials != 2 || completed != 2 {
		t.Errorf("%d partial and %d completed events, want 2 and 2", partials, completed)
	}
}

func TestOpenAIFormatsURLModels(t *testing.T) {
	_, ts := newServer(t, Config{ModelName: "tiny", FastSteps: 2})
	r := post(t, ts.URL+"/v1/images/generations", `{"prompt":"x","size":"64x64","output_format":"jpeg","output_compression":50}`)
	var out struct {
		Data []struct {
			B64JSON string `json:"b64_json"`
			URL     string
		}
		OutputFormat string `json:"output_format"`
	}
	r.json(t, &out)
	raw, _ := base64.StdEncoding.DecodeString(out.Data[0].B64JSON)
	if img, err := jpeg.Decode(bytes.NewReader(raw)); err != nil || img.Bounds().Dx() != 64 || out.OutputFormat != "jpeg" {
		t.Errorf("jpeg: %v %q", err, out.OutputFormat)
	}
	// webp: lossless, read back by golang.org/x/image/webp pixel for pixel
	// against the same request as PNG
	r = post(t, ts.URL+"/v1/images/generations", `{"prompt":"x","size":"64x64","seed":3,"output_format":"webp"}`)
	r.json(t, &out)
	raw, _ = base64.StdEncoding.DecodeString(out.Data[0].B64JSON)
	wimg, err := xwebp.Decode(bytes.NewReader(raw))
	if err != nil || out.OutputFormat != "webp" {
		t.Fatalf("webp: %v %q (%d %s)", err, out.OutputFormat, r.code, r.body)
	}
	r = post(t, ts.URL+"/v1/images/generations", `{"prompt":"x","size":"64x64","seed":3}`)
	r.json(t, &out)
	raw, _ = base64.StdEncoding.DecodeString(out.Data[0].B64JSON)
	pimg, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	for y := range 64 {
		for x := range 64 {
			a, b := color.NRGBAModel.Convert(wimg.At(x, y)), color.NRGBAModel.Convert(pimg.At(x, y))
			if a != b {
				t.Fatalf("webp pixel (%d,%d) %v, png %v", x, y, a, b)
			}
		}
	}
	r = post(t, ts.URL+"/v1/images/generations", `{"prompt":"x","size":"64x64","response_format":"url"}`)
	r.json(t, &out)
	if r.code != http.StatusOK || !strings.HasPrefix(out.Data[0].URL, ts.URL+"/v1/images/files/") {
		t.Fatalf("url: %d %s", r.code, r.body)
	}
	f := get(t, out.Data[0].URL)
	if f.code != http.StatusOK || f.header.Get("Content-Type") != "image/png" || f.header.Get("Expires") == "" {
		t.Errorf("GET %s: %d %v", out.Data[0].URL, f.code, f.header)
	}
	if r := get(t, ts.URL+"/v1/images/files/0123.png"); r.code != http.StatusNotFound {
		t.Errorf("unknown file: %d", r.code)
	}
	var models struct {
		Object string
		Data   []struct{ ID, Object string }
	}
	get(t, ts.URL+"/v1/models").json(t, &models)
	if models.Object != "list" || len(models.Data) != 1 || models.Data[0].ID != "tiny" {
		t.Errorf("models %+v", models)
	}
	if r := post(t, ts.URL+"/v1/images/generations", `{"prompt":"x","model":"other"}`); r.code != http.StatusBadRequest {
		t.Errorf("unknown model: %d", r.code)
	}
}

// editBody is a multipart edit with an image and the given fields.
func editBody(t *testing.T, fields map[string]string, files ...string) (*bytes.Buffer, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for k, v := range fields {
		_ = mw.WriteField(k, v)
	}
	for _, name := range files {
		fw, _ := mw.CreateFormFile(name, name+".png")
		raw, _ := base64.StdEncoding.DecodeString(pngBase64(t, 64, 64))
		_, _ = fw.Write(raw)
	}
	_ = mw.Close()
	return &b, mw.FormDataContentType()
}

func TestOpenAIEdits(t *testing.T) {
	_, ts := newServer(t, Config{FastSteps: 4})
	b, ct := editBody(t, map[string]string{"prompt": "a cat", "n": "1", "size": "64x64"}, "image")
	r := post(t, ts.URL+"/v1/images/edits", b.String(), "Content-Type", ct)
	if r.code != http.StatusOK {
		t.Fatalf("edit: %d %s", r.code, r.body)
	}
	if _, text := r.openAIPNG(t); !strings.Contains(text, "Denoising strength: 0.75") {
		t.Errorf("edit infotext %q: want img2img's strength", text)
	}
	b, ct = editBody(t, map[string]string{"prompt": "a cat"}, "image", "mask") // an opaque mask: nothing to edit
	r = post(t, ts.URL+"/v1/images/edits", b.String(), "Content-Type", ct)
	if msg, _, param := r.apiErr(t); r.code != http.StatusBadRequest || param != "mask" || !strings.Contains(msg, "transparent") {
		t.Errorf("opaque mask: %d %q", r.code, msg)
	}
	b, ct = editBody(t, map[string]string{"prompt": "a cat"}, "image")
	r = post(t, ts.URL+"/v1/images/edits", b.String(), "Content-Type", ct, "Origin", "https://evil.example")
	if r.code != http.StatusForbidden {
		t.Errorf("cross-origin form: %d, want 403", r.code)
	}
}
