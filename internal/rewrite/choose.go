package rewrite

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/session"
)

// Source is a component's model file as its package read it: the path,
// its signature (read once), and the component's own example inputs, on
// which a rewrite of it is verified.
type Source struct {
	Path   string
	IO     *onnxpb.IO
	Inputs func() ([]ort.Tensor, error)
}

// Choose returns the model file a component opens under o: the rewritten
// graph when o asks for rewrites and the rewrite is proven (it is run
// beside the original on src's example inputs once, and its verdict kept
// in o.RewriteCache), else src.Path; and a line that says what was done,
// for load reports ("" when o asks for no rewrite). Problems are logged
// and reported, never returned: the original is always a valid fallback.
func Choose(ctx context.Context, src Source, o session.Options) (path, report string) {
	if len(o.Rewrites) == 0 {
		return src.Path, ""
	}
	log := cmp.Or(o.Logger, slog.New(slog.DiscardHandler))
	for _, v := range src.IO.Outputs {
		if v.ElemType != onnxpb.Float {
			// the verification compares float32 outputs only; without it
			// no rewrite is used, so do not pay for one
			log.Info("rewrite: graph not rewritten: its outputs are not float32, so a rewrite could not be verified", "output", v.Name)
			return src.Path, "skipped: outputs are not float32"
		}
	}
	var rs []Rewrite
	for _, name := range o.Rewrites {
		r, err := Parse(name)
		if err != nil {
			log.Warn("rewrite: unknown rewrite, loading the original graph", "error", err)
			return src.Path, "failed: " + err.Error()
		}
		rs = append(rs, r...)
	}
	res, err := prepare(src.Path, src.IO.ExternalFiles(), rs, o.RewriteCache)
	if err != nil {
		log.Warn("rewrite: failed, loading the original graph", "error", err)
		return src.Path, "failed: " + err.Error()
	}
	for _, why := range res.Report.Refused {
		log.Warn("rewrite: refused at one site", "reason", why)
	}
	if !res.Changed() {
		return src.Path, res.Report.String()
	}
	if res.Path == "" {
		log.Warn("rewrite: the rewritten graph cannot be placed beside the weights (cache on another file system?), loading the original", "cache", o.RewriteCache)
		return src.Path, "refused: cache on another file system"
	}
	if res.Verified < 0 {
		d, err := verifySource(ctx, res, src, o)
		if err != nil {
			log.Warn("rewrite: the rewritten graph could not be verified, loading the original", "error", err)
			return src.Path, "refused: " + err.Error()
		}
		// remembered either way, so that a refusal costs one verification
		if err := res.MarkVerified(d); err != nil {
			log.Warn("rewrite: cache", "error", err)
		}
	}
	if d := res.Verified; d > session.RewriteTolerance {
		log.Warn("rewrite: the rewritten graph changes the outputs, loading the original",
			"max_difference", d, "tolerance", session.RewriteTolerance, "rewrites", res.Report.String(), "cached", res.Cached)
		return src.Path, fmt.Sprintf("refused: outputs differ by %g", d)
	}
	log.Info("rewrite: rewritten", "rewrites", res.Report.String(), "cached", res.Cached,
		"max_difference", res.Verified, "duration", res.Elapsed, "path", res.Path)
	return res.Path, res.Report.String()
}

// verifySource runs res beside its original on src's example inputs, on
// the CPU with the threads o gives.
func verifySource(ctx context.Context, res *Result, src Source, o session.Options) (float64, error) {
	in, err := src.Inputs()
	if err != nil {
		return 0, err
	}
	ins, outs, err := ort.IOOf(src.IO)
	if err != nil {
		return 0, err
	}
	return verify(ctx, res, ins, outs, in, ort.Options{LibraryPath: o.LibraryPath, IntraOpThreads: o.Threads})
}

// Open opens src as Choose picks it, with outs (of the model's outputs)
// fetched: the session, and how it was loaded. The caller must Close the
// session.
func Open(ctx context.Context, src Source, outs []ort.IOInfo, o session.Options) (*ort.Session, session.Loaded, error) {
	ins, _, err := ort.IOOf(src.IO)
	if err != nil {
		return nil, session.Loaded{}, err
	}
	var l session.Loaded
	l.File, l.Rewrites = Choose(ctx, src, o)
	s, err := ort.Open(ctx, l.File, ins, outs, ort.FromSession(o))
	return s, l, err
}
