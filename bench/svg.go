package main

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// WriteTimelineSVG draws the request streams of round (1-based; 0 means the
// first) as an SVG picture: a panel per mode on a shared time axis, a row
// per request, with its queue waits in grey and its encode, denoise and
// decode spans in colour, so that the overlap of stages can be seen.
func (r *Report) WriteTimelineSVG(w io.Writer, round int) error {
	round = max(round, 1)
	var runs []*ModeRun
	var end float64
	for _, run := range r.Runs {
		if run.Round == round {
			runs = append(runs, run)
			end = max(end, run.Wall)
		}
	}
	const (
		left   = 150.0
		plotW  = 900.0
		rowH   = 14.0
		gap    = 4.0
		header = 40.0
		panelT = 22.0
	)
	if end <= 0 {
		end = 1
	}
	x := func(t float64) float64 { return left + plotW*t/end }
	height := header + 30
	for _, run := range runs {
		height += panelT + float64(len(run.Timings))*(rowH+gap) + 16
	}
	b := &strings.Builder{}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", left+plotW+20, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	title := fmt.Sprintf("%d requests, %d×%d, %d steps, %s — %s, %d cores", r.Requests, r.Width, r.Height, r.Steps, r.Arch, r.CPU, r.Cores)
	p(`<text x="10" y="16" font-size="13">%s</text>`+"\n", html.EscapeString(title))
	colors := []struct{ name, fill string }{{"queue", "#d0d0d0"}, {"encode", "#4e79a7"}, {"denoise", "#f28e2b"}, {"decode", "#59a14f"}}
	for i, c := range colors {
		lx := left + float64(i)*90
		p(`<rect x="%.1f" y="24" width="12" height="10" fill="%s"/><text x="%.1f" y="33">%s</text>`+"\n", lx, c.fill, lx+16, c.name)
	}
	y := header
	for _, run := range runs {
		y += panelT
		label := fmt.Sprintf("%s (C=%d): %.1f s, %.2f img/min, overlap %.0f%%", run.Mode, run.Concurrency, run.Wall, run.ImagesPerMin, 100*run.Overlap)
		p(`<text x="10" y="%.1f" font-weight="bold">%s</text>`+"\n", y-6, html.EscapeString(label))
		top := y
		for _, t := range run.Timings {
			p(`<text x="10" y="%.1f">request %d</text>`+"\n", y+rowH-3, t.Index)
			span := func(a, z float64, fill string) {
				if z <= a {
					return
				}
				p(`<rect x="%.2f" y="%.1f" width="%.2f" height="%.1f" fill="%s"/>`+"\n", x(a), y, math.Max(x(z)-x(a), 0.5), rowH, fill)
			}
			span(t.Submit, t.EncodeStart, colors[0].fill)
			span(t.EncodeEnd, t.DenoiseStart, colors[0].fill)
			span(t.DenoiseEnd, t.DecodeStart, colors[0].fill)
			span(t.EncodeStart, t.EncodeEnd, colors[1].fill)
			span(t.DenoiseStart, t.DenoiseEnd, colors[2].fill)
			span(t.DecodeStart, t.DecodeEnd, colors[3].fill)
			y += rowH + gap
		}
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-width="0.5"/>`+"\n", x(run.Wall), top, x(run.Wall), y)
		y += 16
	}
	// time axis
	step := niceStep(end / 10)
	p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, y, left+plotW, y)
	for t := 0.0; t <= end+1e-9; t += step {
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/><text x="%.1f" y="%.1f" text-anchor="middle">%gs</text>`+"\n",
			x(t), y, x(t), y+4, x(t), y+16, math.Round(t*100)/100)
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x(t), header, x(t), y)
	}
	p("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceStep rounds d up to 1, 2 or 5 times a power of ten.
func niceStep(d float64) float64 {
	if d <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(d)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= d {
			return m * p
		}
	}
	return 10 * p
}
