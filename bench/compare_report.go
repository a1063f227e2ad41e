package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
)

// CompareReport is the outcome of Compare. Times are in seconds, sizes in
// bytes.
type CompareReport struct {
	Date       string    `json:"date"`
	CPU        string    `json:"cpu"`
	CPUInt8    string    `json:"cpu_int8"` // "AMX", "VNNI" or "none": what /proc/cpuinfo's flags offer
	Cores      int       `json:"cores"`
	GoVersion  string    `json:"go_version"`
	LoadBefore string    `json:"loadavg_before"`
	LoadAfter  string    `json:"loadavg_after"`
	ORTVersion string    `json:"ort_version"`
	Model      string    `json:"model"`
	Arch       string    `json:"arch"`
	Width      int       `json:"width"`
	Height     int       `json:"height"`
	Steps      int       `json:"steps"`
	Scheduler  string    `json:"scheduler"`
	Guidance   float64   `json:"guidance"`
	Prompt     string    `json:"prompt"`
	Seed       int64     `json:"seed"`
	Rounds     int       `json:"rounds"`
	Variants   []Variant `json:"configs"`
	Interval   int       `json:"step_cache_interval"`
	Branch     int       `json:"step_cache_branch"` // 0: the library's default
	// Reference is the configuration whose image PSNR is measured
	// against: Plain when compared, else the first.
	Reference Variant `json:"reference"`

	UNetMACs MACs             `json:"unet_macs_per_call"` // one guided (batch 2) full call
	Kernels  []KernelRun      `json:"kernels"`            // before and after the children
	Limits   CallLimits       `json:"limits"`
	Runs     []*ChildRun      `json:"runs"` // in the order run
	Configs  []CompareSummary `json:"summary"`
	Targets  []Target         `json:"targets"`

	arch modelgen.Config
}

// KernelRun is one KernelLimits measurement of the run.
type KernelRun struct {
	When    string         `json:"when"`
	Results []KernelResult `json:"results"`
	Errors  []string       `json:"errors,omitempty"`
}

// CallLimits is the shortest time one full guided UNet call could take at
// the kernel speeds measured (the better of the run's measurements of
// each kernel): FP32S with every product at the float32 MatMul and Conv
// speeds, Int8S with the convolutions at the fastest int8 Conv kernel, the
// constant-weight MatMuls at the fastest int8 MatMul kernel and the
// attention products (activation × activation, which int8 leaves in
// float32) at the float32 MatMul's.
type CallLimits struct {
	FP32S        float64 `json:"fp32_s"`
	Int8S        float64 `json:"int8_s"`
	MatMulFP32   float64 `json:"matmul_fp32_gops"`
	ConvFP32     float64 `json:"conv_fp32_gops"`
	MatMulInt8   float64 `json:"matmul_int8_gops"`
	ConvInt8     float64 `json:"conv_int8_gops"`
	MatMulInt8By string  `json:"matmul_int8_kernel"`
	ConvInt8By   string  `json:"conv_int8_kernel"`
}

// CompareSummary is one configuration over the rounds.
type CompareSummary struct {
	Variant     Variant   `json:"config"`
	Runs        int       `json:"runs"` // that produced an image
	Refused     string    `json:"refused,omitempty"`
	Failed      string    `json:"failed,omitempty"`
	UNetRewrite string    `json:"unet_rewrite"`
	OpenS       []float64 `json:"open_s"`
	WarmupS     float64   `json:"warmup_s"` // median
	ImageS      []float64 `json:"image_s"`
	ImageMedS   float64   `json:"image_median_s"`
	// VsPlain is Plain's median image time over this one's (0: Plain not
	// compared).
	VsPlain float64 `json:"x_plain"`
	// Call times: medians over the rounds of each round's median.
	CallS    float64 `json:"unet_call_s"`
	FullS    float64 `json:"full_call_s"`
	ShallowS float64 `json:"shallow_call_s"`
	// PctFP32 and PctInt8 are the limits' time of a full call over FullS.
	PctFP32 float64 `json:"pct_of_fp32_limit"`
	PctInt8 float64 `json:"pct_of_int8_limit"`
	// UNetGOPS is a full call's 2·MACs over FullS, in 10⁹ a second.
	UNetGOPS float64 `json:"unet_gops"`
	MaxRSS   int64   `json:"max_rss"`    // the largest child peak
	RSSLoad  int64   `json:"rss_loaded"` // the largest RSS after the open
	// PSNR is the lowest over the rounds of the image's PSNR against the
	// reference's image of the same round, pixels in [0, 1]; Identical
	// when every image equals it exactly (PSNR then 0).
	PSNR      float64 `json:"psnr_db"`
	Identical bool    `json:"identical,omitempty"`
}

func newCompareReport(cc CompareConfig) *CompareReport {
	r := &CompareReport{
		Date: time.Now().UTC().Format(time.RFC3339), CPU: cpuModel(), CPUInt8: cpuInt8(), Cores: runtime.NumCPU(),
		GoVersion: runtime.Version(), LoadBefore: loadAvg(), Model: cc.ModelDir, Arch: cc.Arch.Name,
		Width: cc.Width, Height: cc.Height, Steps: cc.Steps, Scheduler: cc.Scheduler, Guidance: cc.Guidance,
		Prompt: cc.Prompt, Seed: cc.Seed, Rounds: cc.Rounds, Variants: cc.Variants,
		Interval: cc.StepCacheInterval, Branch: cc.StepCacheBranch, Reference: cc.Variants[0], arch: cc.Arch,
	}
	if slices.Contains(cc.Variants, Plain) {
		r.Reference = Plain
	}
	if r.Scheduler == "" {
		r.Scheduler = "(model's)"
	}
	return r
}

// cpuInt8 returns "AMX" or "VNNI" when /proc/cpuinfo's flags offer them,
// else "none".
func cpuInt8() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		flags := strings.Fields(v)
		switch {
		case slices.Contains(flags, "amx_int8"):
			return "AMX"
		case slices.Contains(flags, "avx512_vnni"), slices.Contains(flags, "avx_vnni"):
			return "VNNI"
		}
		return "none"
	}
	return "unknown"
}

// callLimits computes the limits of a call of m MACs from the kernel
// runs, taking each kernel's best speed over the runs.
func callLimits(m MACs, runs []KernelRun) CallLimits {
	best := map[string]KernelResult{}
	var names []string
	for _, kr := range runs {
		for _, r := range kr.Results {
			if b, ok := best[r.Name]; !ok || r.GOPS > b.GOPS {
				if !ok {
					names = append(names, r.Name)
				}
				best[r.Name] = r
			}
		}
	}
	var l CallLimits
	for _, n := range names {
		r := best[n]
		switch {
		case r.FP32 && r.Family == "MatMul":
			l.MatMulFP32 = r.GOPS
		case r.FP32 && r.Family == "Conv":
			l.ConvFP32 = r.GOPS
		case r.Family == "MatMul" && r.GOPS > l.MatMulInt8:
			l.MatMulInt8, l.MatMulInt8By = r.GOPS, r.Name
		case r.Family == "Conv" && r.GOPS > l.ConvInt8:
			l.ConvInt8, l.ConvInt8By = r.GOPS, r.Name
		}
	}
	t := func(macs, gops float64) float64 { return 2 * macs / (gops * 1e9) }
	if l.MatMulFP32 > 0 && l.ConvFP32 > 0 {
		l.FP32S = t(m.Conv, l.ConvFP32) + t(m.MatMul, l.MatMulFP32)
		if l.MatMulInt8 > 0 && l.ConvInt8 > 0 {
			l.Int8S = t(m.Conv, l.ConvInt8) + t(m.MatMul-m.Attention, l.MatMulInt8) + t(m.Attention, l.MatMulFP32)
		}
	}
	return l
}

// psnr returns the PSNR of got against ref (pixels in [0, 1]), and
// whether they are equal (the PSNR then 0, not +Inf, which JSON lacks).
func psnr(ref, got []float32) (db float64, identical bool, err error) {
	if len(ref) != len(got) || len(ref) == 0 {
		return 0, false, fmt.Errorf("bench: images of %d and %d values", len(ref), len(got))
	}
	var s float64
	for i := range ref {
		d := float64(ref[i]) - float64(got[i])
		s += d * d
	}
	if s == 0 {
		return 0, true, nil
	}
	return 10 * math.Log10(float64(len(ref))/s), false, nil
}

func (r *CompareReport) summarize() {
	r.LoadAfter = loadAvg()
	seq := 77
	for _, run := range r.Runs {
		if run.SeqLen > 0 {
			seq = run.SeqLen
		}
		if run.Scheduler != "" && strings.HasPrefix(r.Scheduler, "(") {
			r.Scheduler = "(model's) " + run.Scheduler
		}
	}
	r.UNetMACs = UNetMACs(r.arch, 2, r.Height/8, r.Width/8, seq)
	r.Limits = callLimits(r.UNetMACs, r.Kernels)
	ref := map[int][]float32{}
	for _, run := range r.Runs {
		if run.Variant == r.Reference && run.Image != "" {
			if px, err := readPixels(run.Image); err == nil {
				ref[run.Round] = px
			}
		}
	}
	r.Configs = nil
	for _, v := range r.Variants {
		s := CompareSummary{Variant: v, PSNR: math.Inf(1), Identical: true}
		var warm, calls, full, shallow []float64
		var psnrs int
		for _, run := range r.Runs {
			if run.Variant != v {
				continue
			}
			if run.Refused != "" {
				s.Refused = run.Refused
				continue
			}
			if run.Failed != "" {
				s.Failed = run.Failed
				continue
			}
			s.Runs++
			s.UNetRewrite = run.UNetRewrite
			s.OpenS = append(s.OpenS, run.OpenS)
			s.ImageS = append(s.ImageS, run.ImageS)
			warm, calls = append(warm, run.WarmupS), append(calls, run.CallMedianS)
			full, shallow = append(full, run.FullMedianS), append(shallow, run.ShallowMedianS)
			s.MaxRSS, s.RSSLoad = max(s.MaxRSS, run.MaxRSS), max(s.RSSLoad, run.RSSLoaded)
			if px, ok := ref[run.Round]; ok && run.Image != "" {
				if got, err := readPixels(run.Image); err == nil {
					if db, same, err := psnr(px, got); err == nil {
						psnrs++
						if !same {
							s.Identical = false
							s.PSNR = min(s.PSNR, db)
						}
					}
				}
			}
		}
		if psnrs == 0 {
			s.Identical = false
		}
		if psnrs == 0 || s.Identical {
			s.PSNR = 0
		}
		if s.Runs > 0 {
			s.ImageMedS, s.WarmupS = median(s.ImageS), median(warm)
			s.CallS, s.FullS, s.ShallowS = median(calls), median(full), median(shallow)
			if s.FullS > 0 {
				s.UNetGOPS = r.UNetMACs.FLOPs() / s.FullS / 1e9
				s.PctFP32, s.PctInt8 = r.Limits.FP32S/s.FullS, r.Limits.Int8S/s.FullS
			}
		}
		r.Configs = append(r.Configs, s)
	}
	if p := r.config(Plain); p != nil && p.ImageMedS > 0 {
		for i := range r.Configs {
			if c := &r.Configs[i]; c.ImageMedS > 0 {
				c.VsPlain = p.ImageMedS / c.ImageMedS
			}
		}
	}
	r.targets()
}

func (r *CompareReport) config(v Variant) *CompareSummary {
	return find(r.Configs, func(c *CompareSummary) bool { return c.Variant == v })
}

// targets are issue 22's, as far as this run measures them.
func (r *CompareReport) targets() {
	r.Targets = nil
	ratio := func(name, goal string, want float64, a, b Variant) {
		x, y := r.config(a), r.config(b)
		if x == nil || y == nil || x.ImageMedS == 0 || y.ImageMedS == 0 {
			return
		}
		v := y.ImageMedS / x.ImageMedS
		r.Targets = append(r.Targets, Target{Name: name, Goal: goal, Value: v, Met: v >= want})
	}
	want, goal := 1.5, "≥ 1.5 (VNNI, no AMX)"
	if r.CPUInt8 == "AMX" {
		want, goal = 2.5, "≥ 2.5 (AMX)"
	}
	img := fmt.Sprintf("%d² %d-step image", r.Width, r.Steps)
	ratio("whole "+img+": int8 (+ rewrites) × plain ORT fp32", goal, want, Int8, Plain)
	ratio("whole "+img+": step cache × rewrites, fp32 (issue: at 50 steps)", "≥ 1.5", 1.5, StepCache, Rewrites)
	ratio("whole "+img+": int8+stepcache × int8 (issue: at 50 steps)", "≥ 1.5", 1.5, Int8StepCache, Int8)
	for _, v := range []Variant{Int8, Int8StepCache} {
		if c := r.config(v); c != nil && c.MaxRSS > 0 {
			gib := float64(c.MaxRSS) / (1 << 30)
			r.Targets = append(r.Targets, Target{Name: fmt.Sprintf("peak RSS, %s, %d²", v, r.Width), Goal: "≤ 2.5 GiB", Value: gib, Met: gib <= 2.5})
		}
	}
}

// WriteJSON writes the report as indented JSON.
func (r *CompareReport) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// WriteMarkdown writes the report's tables as Markdown.
func (r *CompareReport) WriteMarkdown(w io.Writer) error {
	b := &strings.Builder{}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("Machine: %s, %d cores, int8 instructions: %s; %s; ONNX Runtime %s. Load average %s before, %s after. %s.\n\n",
		r.CPU, r.Cores, r.CPUInt8, r.GoVersion, r.ORTVersion, r.LoadBefore, r.LoadAfter, r.Date)
	p("Workload: one %d×%d image, %d steps, scheduler %s, guidance %g, seed %d, prompt %q, model %s (%s); each configuration in its own process, %d round(s), order reversed every other round; step cache interval %d, branch %d (0: the library's default).\n\n",
		r.Width, r.Height, r.Steps, r.Scheduler, r.Guidance, r.Seed, r.Prompt, r.Model, r.Arch, r.Rounds, r.Interval, r.Branch)
	l := r.Limits
	p("UNet full call (guided, batch 2): %.1f GMAC (Conv %.1f, MatMul %.1f of which attention products %.1f). ",
		r.UNetMACs.Total()/1e9, r.UNetMACs.Conv/1e9, r.UNetMACs.MatMul/1e9, r.UNetMACs.Attention/1e9)
	if l.FP32S > 0 {
		p("Kernel limits (best of %d measurement(s) in this run): fp32 MatMul %.0f, Conv %.0f GOP/s → %.2f s a call; int8 MatMul %.0f (%s), Conv %.0f (%s) GOP/s, attention products at fp32 → %.2f s a call.",
			len(r.Kernels), l.MatMulFP32, l.ConvFP32, l.FP32S, l.MatMulInt8, l.MatMulInt8By, l.ConvInt8, l.ConvInt8By, l.Int8S)
	} else {
		p("Kernel limits: not measured.")
	}
	p("\n\n| config | UNet | open s | warm-up s | UNet call s: median (full / shallow) | %% of fp32 limit | %% of int8 limit | whole image s | × plain | peak RSS GiB (loaded) | PSNR vs %s dB |\n", r.Reference)
	p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Configs {
		switch {
		case s.Refused != "":
			p("| %s | refused: %s | | | | | | | | | |\n", s.Variant, s.Refused)
			continue
		case s.Runs == 0 && s.Failed == "":
			p("| %s | not run yet | | | | | | | | | |\n", s.Variant)
			continue
		case s.Runs == 0:
			p("| %s | failed: %s | | | | | | | | | |\n", s.Variant, s.Failed)
			continue
		}
		calls := fmt.Sprintf("%.2f", s.CallS)
		if s.ShallowS > 0 {
			calls = fmt.Sprintf("%.2f (%.2f / %.2f)", s.CallS, s.FullS, s.ShallowS)
		}
		vs := "—"
		if s.VsPlain > 0 {
			vs = fmt.Sprintf("%.2f", s.VsPlain)
		}
		q := "—"
		switch {
		case s.Variant == r.Reference:
			q = "(reference)"
		case s.Identical:
			q = "identical"
		case s.PSNR > 0:
			q = fmt.Sprintf("%.1f", s.PSNR)
		}
		pct := func(x float64) string {
			if x <= 0 {
				return "—"
			}
			return fmt.Sprintf("%.0f%%", 100*x)
		}
		rw := cmp0(s.UNetRewrite, "as the file")
		p("| %s | %s | %s | %.1f | %s | %s | %s | %s | %s | %.2f (%.2f) | %s |\n", s.Variant, rw, floats(s.OpenS, 1), s.WarmupS, calls,
			pct(s.PctFP32), pct(s.PctInt8), floats(s.ImageS, 1), vs, float64(s.MaxRSS)/(1<<30), float64(s.RSSLoad)/(1<<30), q)
	}
	p("\n| run | start UTC | round | config | open s | image s (encode / denoise / decode) | UNet calls full + shallow | process s | peak RSS GiB | load avg after |\n|---:|---|---:|---|---:|---:|---:|---:|---:|---|\n")
	for i, run := range r.Runs {
		switch {
		case run.Refused != "":
			p("| %d | %s | %d | %s | refused | | | %.1f | | %s |\n", i+1, run.Start, run.Round, run.Variant, run.WallS, run.Load)
		case run.Failed != "":
			p("| %d | %s | %d | %s | failed | | | %.1f | | %s |\n", i+1, run.Start, run.Round, run.Variant, run.WallS, run.Load)
		default:
			p("| %d | %s | %d | %s | %.1f | %.1f (%.1f / %.1f / %.1f) | %d + %d | %.1f | %.2f | %s |\n", i+1, run.Start, run.Round, run.Variant, run.OpenS,
				run.ImageS, run.EncodeS, run.DenoiseS, run.DecodeS, run.FullCalls, run.ShallowCalls, run.WallS, float64(run.MaxRSS)/(1<<30), run.Load)
		}
	}
	for _, s := range r.Configs {
		if s.Failed != "" {
			p("\n%s failed: %s\n", s.Variant, s.Failed)
		}
	}
	for _, k := range r.Kernels {
		for _, e := range k.Errors {
			p("\nkernel not measured (%s): %s\n", k.When, e)
		}
	}
	p("\n| target | goal | measured | met |\n|---|---|---:|---|\n")
	for _, t := range r.Targets {
		met := "no"
		if t.Met {
			met = "yes"
		}
		p("| %s | %s | %.2f | %s |\n", t.Name, t.Goal, t.Value, met)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func cmp0(s, def string) string {
	if s == "" {
		return def
	}
	return strings.ReplaceAll(s, "|", "/")
}
