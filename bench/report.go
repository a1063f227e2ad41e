package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Report is the outcome of Run. Times are in seconds, sizes in bytes,
// fractions in [0, 1].
type Report struct {
	Date       string   `json:"date"`
	CPU        string   `json:"cpu"`
	Cores      int      `json:"cores"`
	GoVersion  string   `json:"go_version"`
	LoadBefore string   `json:"loadavg_before"` // /proc/loadavg at the start
	LoadAfter  string   `json:"loadavg_after"`
	ORTVersion string   `json:"ort_version"`
	ORTLibrary string   `json:"ort_library"`
	Model      string   `json:"model"`
	Arch       string   `json:"arch"`
	Attention  string   `json:"attention"`
	Width      int      `json:"width"`
	Height     int      `json:"height"`
	Steps      int      `json:"steps"`
	Scheduler  string   `json:"scheduler"`
	Guidance   float64  `json:"guidance"`
	Requests   int      `json:"requests"`
	Concurrent int      `json:"concurrency"`
	Rounds     int      `json:"rounds"`
	MaxBatch   int      `json:"max_batch"`
	Prompts    []string `json:"prompts"`
	LoadS      float64  `json:"load_s"`
	// Rewrites says what each component's graph rewriting did (nil: the
	// files as they are).
	Rewrites map[string]string `json:"rewrites,omitempty"`
	// NoSpinning: the sessions' idle threads sleep at once (sd.SessionOptions.Spinning).
	NoSpinning bool `json:"no_spinning,omitempty"`
	// Devices are the components -device placed (Config.Devices); the
	// others ran on the CPU.
	Devices map[string]string `json:"devices,omitempty"`
	SeqLen  int               `json:"seq_len"`

	// Work of one request, counted analytically (see UNetMACs).
	TextMACs    float64         `json:"text_encoder_macs"`      // the guided pair
	UNetMACs    float64         `json:"unet_macs_per_call"`     // one guided (batch 2) call
	UNetCalls   int             `json:"unet_calls_per_request"` // the scheduler's model evaluations (PNDM: steps + 1)
	VAEMACs     float64         `json:"vae_decoder_macs"`       // one image
	FLOPsPerReq float64         `json:"flops_per_request"`      // 2 × all MACs
	UNetShare   float64         `json:"unet_share_of_flops"`    // of FLOPsPerReq
	VAEShare    float64         `json:"vae_share_of_flops"`     // of FLOPsPerReq
	TextShare   float64         `json:"text_share_of_flops"`    // of FLOPsPerReq
	MatMul      []MatMulResult  `json:"matmul"`                 // peak by thread count
	UNetScaling *Scaling        `json:"unet_scaling"`           // one UNet call, half vs all threads
	Latency     *LatencyCompare `json:"latency"`                // single requests
	Runs        []*ModeRun      `json:"runs"`                   // every stream, in the order run
	Modes       []ModeSummary   `json:"modes"`                  // per mode over rounds
	Targets     []Target        `json:"targets"`
	PeakRSS     int64           `json:"peak_rss"` // VmHWM at the end

	cfg Config
}

func newReport(cfg Config) *Report {
	r := &Report{
		Date: time.Now().UTC().Format(time.RFC3339), CPU: cpuModel(), Cores: runtime.NumCPU(),
		GoVersion: runtime.Version(), LoadBefore: loadAvg(),
		Model: cfg.ModelDir, Arch: cfg.Arch.Name, Attention: cfg.Attention.String(),
		Width: cfg.Width, Height: cfg.Height, Steps: cfg.Steps, Scheduler: cfg.Scheduler, Guidance: cfg.Guidance,
		Requests: cfg.Requests, Concurrent: cfg.Concurrency, Rounds: cfg.Rounds, MaxBatch: cfg.MaxBatch,
		Prompts: cfg.Prompts, NoSpinning: cfg.NoSpinning, cfg: cfg,
	}
	for c, d := range cfg.Devices {
		if r.Devices == nil {
			r.Devices = map[string]string{}
		}
		r.Devices[c.String()] = string(d)
	}
	if r.Scheduler == "" {
		r.Scheduler = "(model's)"
	}
	return r
}

func (r *Report) setWork(cfg Config, unetCalls int) {
	r.UNetCalls = unetCalls
	lh, lw := cfg.Height/8, cfg.Width/8
	r.TextMACs = TextEncoderMACs(cfg.Arch, 2, r.SeqLen).Total()
	r.UNetMACs = UNetMACs(cfg.Arch, 2, lh, lw, r.SeqLen).Total()
	r.VAEMACs = VAEDecoderMACs(cfg.Arch, 1, lh, lw).Total()
	all := r.TextMACs + float64(unetCalls)*r.UNetMACs + r.VAEMACs
	r.FLOPsPerReq = 2 * all
	r.UNetShare = float64(unetCalls) * r.UNetMACs / all
	r.VAEShare = r.VAEMACs / all
	r.TextShare = r.TextMACs / all
}

// peak returns the best MatMul GFLOP/s measured on threads threads, or 0.
func (r *Report) peak(threads int) float64 {
	for _, m := range r.MatMul {
		if m.Threads == threads {
			return m.GFLOPS
		}
	}
	return 0
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// LatencyCompare is the time of single requests run alone: the sequential
// loop and the engine in its latency mode, in alternating pairs.
type LatencyCompare struct {
	Sequential        []float64 `json:"sequential_s"`
	Engine            []float64 `json:"engine_s"`
	SequentialOutside []float64 `json:"sequential_outside_ort"` // fraction of wall outside ONNX Runtime
	EngineOutside     []float64 `json:"engine_outside_ort"`
	SequentialMedian  float64   `json:"sequential_median_s"`
	EngineMedian      float64   `json:"engine_median_s"`
	Ratio             float64   `json:"ratio"` // EngineMedian / SequentialMedian
	PairRatios        []float64 `json:"pair_ratios"`
}

func (l *LatencyCompare) summarize() {
	l.SequentialMedian, l.EngineMedian = median(l.Sequential), median(l.Engine)
	l.Ratio = l.EngineMedian / l.SequentialMedian
	for i := range l.Engine {
		l.PairRatios = append(l.PairRatios, l.Engine[i]/l.Sequential[i])
	}
}

// ModeRun is one run of the request stream in one mode.
type ModeRun struct {
	Mode         Mode    `json:"mode"`
	Round        int     `json:"round"`
	Concurrency  int     `json:"concurrency"`
	Requests     int     `json:"requests"`
	Wall         float64 `json:"wall_s"`
	ImagesPerMin float64 `json:"images_per_min"`
	LatencyP50   float64 `json:"latency_p50_s"`
	LatencyP95   float64 `json:"latency_p95_s"`
	// Stages: each stage's busy time (the union of its spans over all
	// requests) and the sum of its spans.
	Stages map[string]StageStat `json:"stages"`
	// Overlap is the fraction of wall time in which two or more stage
	// spans (of any requests) ran at once; Active[k] the fraction with at
	// least k+1.
	Overlap float64   `json:"overlap"`
	Active  []float64 `json:"active"`
	// Sessions is each ONNX Runtime session's calls and time inside ONNX
	// Runtime during the run; ORTBusy their sum, which exceeds Wall when
	// calls run in parallel.
	Sessions map[string]SessionStats `json:"sessions"`
	ORTBusy  float64                 `json:"ort_busy_s"`
	// NoModelCall is the fraction of wall time in which no model call was
	// in flight. OutsideORT is the fraction of wall time outside ONNX
	// Runtime: exact (1 − ORTBusy/Wall) when calls never overlap
	// (Concurrency 1), else NoModelCall.
	NoModelCall float64 `json:"no_model_call"`
	OutsideORT  float64 `json:"outside_ort"`
	// GoInStages is the fraction of the stages' summed time not inside
	// model calls: tokenizing, scheduler steps, guidance, conversions.
	GoInStages float64 `json:"go_in_stages"`
	GFLOPS     float64 `json:"gflops"`      // all requests' FLOPs over Wall
	PctPeak    float64 `json:"pct_of_peak"` // of the all-threads MatMul
	PeakGFLOPS float64 `json:"peak_gflops"` // all-threads MatMul measured right before the run (0: not measured)
	UNetGFLOPS float64 `json:"unet_gflops"` // UNet FLOPs over the UNet sessions' busy time (rate inside a call)
	PeakRSS    int64   `json:"peak_rss"`    // VmHWM during the run (0: unknown)
	RSSBefore  int64   `json:"rss_before"`  // VmRSS when the run started: the loaded models
	// CPU is the CPU time (user + system) the process used during the
	// run: on a shared machine a mode with more runnable threads gets a
	// larger share of the cores, so compare ImagesPerCPUMin too.
	CPU             float64         `json:"cpu_s"`
	ImagesPerCPUMin float64         `json:"images_per_cpu_min"`
	Load            string          `json:"loadavg"` // /proc/loadavg when the run ended
	Timings         []RequestTiming `json:"timings"`
}

// StageStat is one stage's time in a run.
type StageStat struct {
	Busy float64 `json:"busy_s"` // union of the stage's spans
	Sum  float64 `json:"sum_s"`  // sum over requests (a span shared by a batch counted once)
	Frac float64 `json:"frac"`   // Busy / Wall
}

func (m *ModeRun) analyze(start, end time.Time, ts []RequestTiming, calls map[string][]interval) {
	m.Wall = end.Sub(start).Seconds()
	m.ImagesPerMin = float64(len(ts)) / m.Wall * 60
	var lat []float64
	stages := map[string][]interval{}
	var all []interval
	for i := range ts {
		t := &ts[i]
		t.fill(i, start)
		lat = append(lat, t.Latency)
		for name, iv := range map[string]interval{
			"encode":  {t.encStart, t.encEnd},
			"denoise": {t.denStart, t.denEnd},
			"decode":  {t.decStart, t.decEnd},
		} {
			stages[name] = append(stages[name], iv)
			all = append(all, iv)
		}
	}
	m.Timings = ts
	m.LatencyP50, m.LatencyP95 = quantile(lat, 0.5), quantile(lat, 0.95)
	m.Stages = map[string]StageStat{}
	var stageSum float64
	for name, ivs := range stages {
		// requests batched together share one denoise span: count it once
		ivs = slices.CompactFunc(slices.SortedFunc(slices.Values(ivs), func(a, b interval) int {
			return cmp.Or(a.start.Compare(b.start), a.end.Compare(b.end))
		}), func(a, b interval) bool { return a.start.Equal(b.start) && a.end.Equal(b.end) })
		s := StageStat{Busy: union(ivs, start, end).Seconds(), Sum: sum(ivs).Seconds()}
		s.Frac = s.Busy / m.Wall
		m.Stages[name] = s
		stageSum += s.Sum
	}
	for _, d := range coverage(all, start, end) {
		m.Active = append(m.Active, d.Seconds()/m.Wall)
	}
	if len(m.Active) > 1 {
		m.Overlap = m.Active[1]
	}
	var callIvs []interval
	var callSum float64
	for _, ivs := range calls {
		callIvs = append(callIvs, ivs...)
		callSum += sum(ivs).Seconds()
	}
	m.NoModelCall = 1 - union(callIvs, start, end).Seconds()/m.Wall
	for _, s := range m.Sessions {
		m.ORTBusy += s.Busy
	}
	if m.Concurrency == 1 {
		m.OutsideORT = 1 - m.ORTBusy/m.Wall
	} else {
		m.OutsideORT = m.NoModelCall
	}
	if stageSum > 0 {
		m.GoInStages = (stageSum - callSum) / stageSum
	}
}

// ModeSummary is a mode over all rounds.
type ModeSummary struct {
	Mode         Mode      `json:"mode"`
	ImagesPerMin float64   `json:"images_per_min"` // mean over rounds
	Speedup      float64   `json:"speedup"`        // mean over rounds of images/min ÷ the same round's sequential
	Speedups     []float64 `json:"speedups"`
	LatencyP50   float64   `json:"latency_p50_s"`
	LatencyP95   float64   `json:"latency_p95_s"`
	Overlap      float64   `json:"overlap"`
	OutsideORT   float64   `json:"outside_ort"`
	GoInStages   float64   `json:"go_in_stages"`
	GFLOPS       float64   `json:"gflops"`
	PctPeak      float64   `json:"pct_of_peak"`
	UNetGFLOPS   float64   `json:"unet_gflops"`
	PeakRSS      int64     `json:"peak_rss"`
	RSSBefore    int64     `json:"rss_before"`
}

// Target is one of issue 6's targets and whether this run met it.
type Target struct {
	Name  string  `json:"name"`
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
}

func (r *Report) summarize() {
	r.LoadAfter = loadAvg()
	r.Modes, r.Targets = nil, nil
	peakAll := r.peak(r.Cores)
	flops := r.FLOPsPerReq * float64(r.Requests)
	unetFLOPs := 2 * r.UNetMACs * float64(r.UNetCalls*r.Requests)
	seqRound := map[int]float64{}
	for _, run := range r.Runs {
		run.GFLOPS = flops / run.Wall / 1e9
		if run.CPU > 0 {
			run.ImagesPerCPUMin = float64(run.Requests) / run.CPU * 60
		}
		if p := cmp.Or(run.PeakGFLOPS, peakAll); p > 0 {
			run.PctPeak = run.GFLOPS / p
		}
		var ub float64
		for _, name := range []string{"unet", "unet_half"} {
			ub += run.Sessions[name].Busy
		}
		if ub > 0 {
			run.UNetGFLOPS = unetFLOPs / ub / 1e9
		}
		if run.Mode == Sequential {
			seqRound[run.Round] = run.ImagesPerMin
		}
	}
	for _, mode := range r.cfg.Modes {
		s := ModeSummary{Mode: mode}
		var n float64
		for _, run := range r.Runs {
			if run.Mode != mode {
				continue
			}
			n++
			s.ImagesPerMin += run.ImagesPerMin
			s.LatencyP50 += run.LatencyP50
			s.LatencyP95 += run.LatencyP95
			s.Overlap += run.Overlap
			s.OutsideORT += run.OutsideORT
			s.GoInStages += run.GoInStages
			s.GFLOPS += run.GFLOPS
			s.PctPeak += run.PctPeak
			s.UNetGFLOPS += run.UNetGFLOPS
			s.PeakRSS = max(s.PeakRSS, run.PeakRSS)
			s.RSSBefore = max(s.RSSBefore, run.RSSBefore)
			if b := seqRound[run.Round]; b > 0 {
				s.Speedups = append(s.Speedups, run.ImagesPerMin/b)
			}
		}
		if n == 0 {
			continue
		}
		for _, p := range []*float64{&s.ImagesPerMin, &s.LatencyP50, &s.LatencyP95, &s.Overlap, &s.OutsideORT, &s.GoInStages, &s.GFLOPS, &s.PctPeak, &s.UNetGFLOPS} {
			*p /= n
		}
		s.Speedup = mean(s.Speedups)
		r.Modes = append(r.Modes, s)
	}
	r.targets()
}

func (r *Report) mode(m Mode) *ModeSummary {
	return find(r.Modes, func(s *ModeSummary) bool { return s.Mode == m })
}

// find returns the first element of s that match accepts, or nil.
func find[T any](s []T, match func(*T) bool) *T {
	for i := range s {
		if match(&s[i]) {
			return &s[i]
		}
	}
	return nil
}

func (r *Report) targets() {
	if l := r.Latency; l != nil {
		out := median(l.EngineOutside)
		r.Targets = append(r.Targets, Target{
			Name: "time outside ONNX Runtime, engine (latency mode), one request", Goal: "< 2% of wall",
			Value: out, Met: out < 0.02,
		})
	}
	if s := r.mode(Sequential); s != nil {
		r.Targets = append(r.Targets, Target{
			Name: "time outside ONNX Runtime, sequential stream", Goal: "< 2% of wall",
			Value: s.OutsideORT, Met: s.OutsideORT < 0.02,
		})
		for _, m := range []Mode{Pipelined, PipelinedFull, Batched} {
			if p := r.mode(m); p != nil && p.Speedup > 0 {
				r.Targets = append(r.Targets, Target{
					Name: fmt.Sprintf("throughput %s ÷ sequential, %d requests", m, r.Requests), Goal: "≥ 1.2",
					Value: p.Speedup, Met: p.Speedup >= 1.2,
				})
			}
		}
	}
	if l := r.Latency; l != nil {
		r.Targets = append(r.Targets, Target{
			Name: "single-request latency, latency mode ÷ sequential (medians)", Goal: "within 2% (≤ 1.02)",
			Value: l.Ratio, Met: l.Ratio <= 1.02,
		})
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

// WriteMarkdown writes the report's tables as Markdown.
func (r *Report) WriteMarkdown(w io.Writer) error {
	b := &strings.Builder{}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("Machine: %s, %d cores; %s; ONNX Runtime %s. Load average %s before, %s after. %s.\n\n",
		r.CPU, r.Cores, r.GoVersion, r.ORTVersion, r.LoadBefore, r.LoadAfter, r.Date)
	p("Workload: %d requests, %d in flight in the engine modes, %d×%d, %d steps, scheduler %s, guidance %g, model %s (%s, %s attention), %d round(s).\n\n",
		r.Requests, r.Concurrent, r.Width, r.Height, r.Steps, r.Scheduler, r.Guidance, r.Model, r.Arch, r.Attention, r.Rounds)
	if r.Rewrites == nil {
		p("Graph rewrites: none (the files as they are). ")
	} else {
		p("Graph rewrites:")
		for _, c := range slices.Sorted(maps.Keys(r.Rewrites)) {
			p(" %s %s;", c, r.Rewrites[c])
		}
		p(" ")
	}
	if r.NoSpinning {
		p("Idle pool threads do not spin. ")
	}
	if len(r.Devices) > 0 {
		p("Devices:")
		for _, c := range slices.Sorted(maps.Keys(r.Devices)) {
			p(" %s on %s;", c, r.Devices[c])
		}
		p(" the rest on the CPU. ")
	}
	p("Load %.1f s.\n\n", r.LoadS)
	p("Work of one request (counted analytically): %.1f GFLOP — UNet %.1f GMAC a call × %d calls (%.0f%%), VAE decoder %.1f GMAC (%.0f%%), text encoder %.1f GMAC (%.1f%%).\n\n",
		r.FLOPsPerReq/1e9, r.UNetMACs/1e9, r.UNetCalls, 100*r.UNetShare, r.VAEMACs/1e9, 100*r.VAEShare, r.TextMACs/1e9, 100*r.TextShare)
	if len(r.MatMul) > 0 {
		p("| MatMul %d³ fp32 through ONNX Runtime | best GFLOP/s | median GFLOP/s |\n|---|---:|---:|\n", r.MatMul[0].N)
		for _, m := range r.MatMul {
			p("| %d thread(s) | %.0f | %.0f |\n", m.Threads, m.GFLOPS, m.GFLOPSMd)
		}
		if a, o := r.peak(r.Cores), r.peak(1); a > 0 && o > 0 && r.Cores > 1 {
			p("\nMatMul thread scaling 1 → %d: %.2f×.", r.Cores, a/o)
		}
		if s := r.UNetScaling; s != nil {
			p(" UNet call (batch 2) on %d vs %d thread(s): %.2f s vs %.2f s, %.2f×.", s.AllThreads, s.FewThreads, s.AllS, s.FewS, s.Speedup)
		}
		p("\n\n")
	}
	p("| mode | C | images/min | × sequential | p50 s | p95 s | stage overlap | outside ORT | Go in stages | GFLOP/s | %% of peak | UNet GFLOP/s in call | RSS GiB: peak (models loaded) |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Modes {
		c := r.Concurrent
		if s.Mode == Sequential {
			c = 1
		}
		p("| %s | %d | %.2f | %s | %.1f | %.1f | %.0f%% | %.2f%% | %.2f%% | %.0f | %.0f%% | %.0f | %.1f (%.1f) |\n",
			s.Mode, c, s.ImagesPerMin, ratios(s.Speedup, s.Speedups), s.LatencyP50, s.LatencyP95,
			100*s.Overlap, 100*s.OutsideORT, 100*s.GoInStages, s.GFLOPS, 100*s.PctPeak, s.UNetGFLOPS, float64(s.PeakRSS)/(1<<30), float64(s.RSSBefore)/(1<<30))
	}
	p("\n| run | mode | wall s | CPU s (÷ wall) | images per CPU-min | encode busy | denoise busy | decode busy | ORT busy ÷ wall | MatMul GFLOP/s just before | load avg after |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for i, run := range r.Runs {
		peak := "—"
		if run.PeakGFLOPS > 0 {
			peak = fmt.Sprintf("%.0f", run.PeakGFLOPS)
		}
		p("| %d | %s | %.1f | %.0f (%.2f) | %.3f | %.0f%% | %.0f%% | %.0f%% | %.2f | %s | %s |\n", i+1, run.Mode, run.Wall, run.CPU, run.CPU/run.Wall, run.ImagesPerCPUMin,
			100*run.Stages["encode"].Frac, 100*run.Stages["denoise"].Frac, 100*run.Stages["decode"].Frac, run.ORTBusy/run.Wall, peak, run.Load)
	}
	if l := r.Latency; l != nil {
		p("\nSingle request alone (alternating pairs): sequential %s s, engine latency mode %s s; median ratio %.3f (pairs %s); outside ORT %.2f%% / %.2f%%.\n",
			floats(l.Sequential, 2), floats(l.Engine, 2), l.Ratio, floats(l.PairRatios, 3), 100*median(l.SequentialOutside), 100*median(l.EngineOutside))
	}
	p("\n| target | goal | measured | met |\n|---|---|---:|---|\n")
	for _, t := range r.Targets {
		v := fmt.Sprintf("%.3f", t.Value)
		if strings.Contains(t.Goal, "%") && !strings.Contains(t.Goal, "≤") {
			v = fmt.Sprintf("%.2f%%", 100*t.Value)
		}
		met := "no"
		if t.Met {
			met = "yes"
		}
		p("| %s | %s | %s | %s |\n", t.Name, t.Goal, v, met)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func ratios(m float64, all []float64) string {
	if len(all) == 0 {
		return "—"
	}
	if len(all) == 1 {
		return fmt.Sprintf("%.2f", m)
	}
	return fmt.Sprintf("%.2f (%s)", m, floats(all, 2))
}

// floats formats up to 10 values; more are elided (the JSON has them all).
func floats(v []float64, prec int) string {
	const most = 10
	var s []string
	for i, x := range v {
		if i == most {
			s = append(s, fmt.Sprintf("… %d more", len(v)-most))
			break
		}
		s = append(s, fmt.Sprintf("%.*f", prec, x))
	}
	return strings.Join(s, ", ")
}

func median(v []float64) float64 { return quantile(v, 0.5) }

// quantile returns the q-quantile of v by linear interpolation.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	x := q * float64(len(s)-1)
	i := int(x)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (x-float64(i))*(s[i+1]-s[i])
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}
