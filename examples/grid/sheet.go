package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/image/draw"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Contact sheet layout, in pixels.
const (
	maxThumb = 160 // longest side of a cell's image
	pad      = 6
	lineH    = 13 // basicfont.Face7x13
	charW    = 7
)

// Sheets draws one contact sheet per style from the manifests in dir,
// dir/sheets/<style>.png: a row per subject, a column per replica, each
// image labelled with its seed, the replicas numbered, the subjects on the left and the style on
// top. Images that are missing or fail to verify show as grey cells. It
// returns the files written.
func Sheets(dir string) ([]string, error) {
	m, err := readDir(dir)
	if err != nil {
		return nil, err
	}
	recs := sorted(m)
	var styles, subjects []string
	cols := 0
	byStyle := map[string]map[[2]int]Record{} // style → (subject row, replica) → record
	for _, r := range recs {
		if !slices.Contains(styles, r.Style) {
			styles = append(styles, r.Style)
			byStyle[r.Style] = map[[2]int]Record{}
		}
		if !slices.Contains(subjects, r.Subject) {
			subjects = append(subjects, r.Subject)
		}
		cols = max(cols, r.Replica+1)
		byStyle[r.Style][[2]int{slices.Index(subjects, r.Subject), r.Replica}] = r
	}
	var files []string
	for _, style := range styles {
		img := sheet(dir, style, subjects, cols, byStyle[style])
		name := filepath.Join(dir, "sheets", slug(style)+".png")
		if err := writeFileAtomic(name, func(w io.Writer) error { return png.Encode(w, img) }); err != nil {
			return files, fmt.Errorf("grid: sheet: %w", err)
		}
		files = append(files, name)
	}
	return files, nil
}

func sheet(dir, style string, subjects []string, cols int, cells map[[2]int]Record) *image.RGBA {
	// the thumbnail size follows the first image of the style
	tw, th := maxThumb, maxThumb
	for _, r := range cells {
		tw, th = fit(r.Width, r.Height)
		break
	}
	labelW := 0
	for _, s := range subjects {
		labelW = max(labelW, min(len(s), 24)*charW)
	}
	cw := max(tw, 10*charW+2) // room for a 32-bit seed under the image
	cellW, cellH := cw+pad, th+lineH+pad
	left, top := labelW+2*pad, 3*lineH+pad
	w := left + cols*cellW + pad
	h := top + len(subjects)*cellH + pad
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	label(img, pad, lineH+2, clip(style, (w-2*pad)/charW))
	for col := range cols {
		label(img, left+col*cellW, top-4, fmt.Sprintf("#%d", col))
	}
	for row, subject := range subjects {
		y := top + row*cellH
		label(img, pad, y+th/2+lineH/2, clip(subject, 24))
		for col := range cols {
			x := left + col*cellW + (cw-tw)/2
			rect := image.Rect(x, y, x+tw, y+th)
			r, ok := cells[[2]int{row, col}]
			var src image.Image
			if ok && verify(dir, r) == nil {
				src = decode(filepath.Join(dir, filepath.FromSlash(r.File)))
			}
			if src == nil {
				draw.Draw(img, rect, image.NewUniform(color.Gray{200}), image.Point{}, draw.Src)
				label(img, x+2, y+th+lineH-2, "missing")
				continue
			}
			draw.ApproxBiLinear.Scale(img, rect, src, src.Bounds(), draw.Src, nil)
			label(img, left+col*cellW, y+th+lineH-2, strconv.FormatInt(r.Seed, 10))
		}
	}
	return img
}

// fit scales w×h to fit maxThumb, never up.
func fit(w, h int) (int, int) {
	if w <= 0 || h <= 0 {
		return maxThumb, maxThumb
	}
	if w <= maxThumb && h <= maxThumb {
		return w, h
	}
	if w >= h {
		return maxThumb, max(1, h*maxThumb/w)
	}
	return max(1, w*maxThumb/h), maxThumb
}

func decode(path string) image.Image {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		return nil
	}
	return img
}

// label draws s with its baseline at (x, y).
func label(dst draw.Image, x, y int, s string) {
	d := font.Drawer{Dst: dst, Src: image.Black, Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// clip shortens s to n runes, marking the cut.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n || n < 4 {
		return s
	}
	return string(r[:n-3]) + "..." // basicfont has ASCII only
}
