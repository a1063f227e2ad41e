package server

import (
	"bufio"
	"cmp"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// latencyBuckets are the upper bounds, in seconds, of the request latency
// histogram.
var latencyBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

type histogram struct {
	counts []int64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	n      int64
}

// collector holds the service's own counters; the engine's come from
// Engine.Metrics at scrape time.
type collector struct {
	mu        sync.Mutex
	requests  map[[2]string]int64 // route, code
	rejected  int64               // 429s: queue full
	bodies    int64               // 429s: body memory full
	images    int64               // images sent to clients
	outcomes  map[[2]string]int64 // api, outcome
	modes     map[string]int64
	latency   map[string]*histogram // per api, completed tasks
	meanLat   time.Duration         // moving average of completed tasks
	completed int64
}

func (c *collector) init() {
	c.requests = map[[2]string]int64{}
	c.outcomes = map[[2]string]int64{}
	c.modes = map[string]int64{}
	c.latency = map[string]*histogram{}
}

func (c *collector) request(route string, code int) {
	c.mu.Lock()
	c.requests[[2]string{route, strconv.Itoa(code)}]++
	c.mu.Unlock()
}

func (c *collector) rejectedFull() {
	c.mu.Lock()
	c.rejected++
	c.mu.Unlock()
}

func (c *collector) rejectedBodies() {
	c.mu.Lock()
	c.bodies++
	c.mu.Unlock()
}

func (c *collector) served(n int) {
	c.mu.Lock()
	c.images += int64(n)
	c.mu.Unlock()
}

func (c *collector) finished(t *task, d time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	outcome := "ok"
	if err != nil {
		outcome = asAPIError(err).Type
	}
	c.outcomes[[2]string{t.api, outcome}]++
	c.modes[t.mode]++
	if err != nil {
		return
	}
	h := c.latency[t.api]
	if h == nil {
		h = &histogram{counts: make([]int64, len(latencyBuckets)+1)}
		c.latency[t.api] = h
	}
	sec := d.Seconds()
	i, _ := slices.BinarySearch(latencyBuckets, sec)
	h.counts[i]++
	h.sum += sec
	h.n++
	c.completed++
	if c.completed == 1 {
		c.meanLat = d
	} else {
		c.meanLat += (d - c.meanLat) / 8
	}
}

func (c *collector) meanLatency() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.meanLat
}

func labelValue(v string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

// handleMetrics writes the Prometheus text exposition format (version
// 0.0.4) by hand.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	metric := func(name, typ, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	sample := func(name string, v float64, labels ...string) {
		bw.WriteString(name)
		if len(labels) > 0 {
			bw.WriteByte('{')
			for i := 0; i+1 < len(labels); i += 2 {
				if i > 0 {
					bw.WriteByte(',')
				}
				fmt.Fprintf(bw, `%s="%s"`, labels[i], labelValue(labels[i+1]))
			}
			bw.WriteByte('}')
		}
		bw.WriteByte(' ')
		bw.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		bw.WriteByte('\n')
	}
	gauge := func(name, help string, v float64) {
		metric(name, "gauge", help)
		sample(name, v)
	}
	counter := func(name, help string, v float64) {
		metric(name, "counter", help)
		sample(name, v)
	}

	s.mu.Lock()
	queued, admitted, jobs := len(s.waiting), len(s.active), len(s.live)
	s.mu.Unlock()
	if m, ok := s.jobs.(interface{ Len() int }); ok {
		jobs = m.Len() // the records of running jobs included
	}
	em := s.models.metrics()
	draining := 0.0
	if s.draining.Load() {
		draining = 1
	}

	gauge("sdpipe_queue_depth", "Admitted generations waiting for the engine to accept them.", float64(queued))
	gauge("sdpipe_queue_capacity", "The most generations admitted at once; past it requests get 429.", float64(s.cfg.MaxQueue))
	gauge("sdpipe_admitted", "Generations admitted and not finished (waiting or running).", float64(admitted))
	gauge("sdpipe_inflight_requests", "Engine requests accepted and not yet finished.", float64(em.InFlight))
	gauge("sdpipe_async_jobs", "Async jobs kept (running or finished, until they expire).", float64(jobs))
	gauge("sdpipe_body_bytes_reading", "Bytes of request bodies being read (reserved from the body memory).", float64(s.bodies.inUse()))
	gauge("sdpipe_body_memory_bytes", "The most bytes of request bodies read at once; past it requests get 429.", float64(s.cfg.MaxBodyMemory))
	gauge("sdpipe_draining", "1 while the server shuts down.", draining)
	s.writeQueueMetrics(r.Context(), gauge)
	s.mu.Lock()
	lim := s.conns
	s.mu.Unlock()
	if lim != nil {
		gauge("sdpipe_open_connections", "Connections open (Serve only).", float64(lim.open.Load()))
		counter("sdpipe_rejected_connections_total", "Connections answered 503 and closed because MaxConns were open.", float64(lim.refused.Load()))
	}

	c := &s.met
	c.mu.Lock()
	metric("sdpipe_http_requests_total", "counter", "HTTP requests by route and status code.")
	for _, k := range slices.SortedFunc(maps.Keys(c.requests), cmpPair) {
		sample("sdpipe_http_requests_total", float64(c.requests[k]), "route", k[0], "code", k[1])
	}
	counter("sdpipe_rejected_queue_full_total", "Requests refused with 429 because the queue was full.", float64(c.rejected))
	counter("sdpipe_rejected_body_memory_total", "Requests refused with 429 because the bodies being read filled the body memory.", float64(c.bodies))
	counter("sdpipe_images_served_total", "Images sent to clients.", float64(c.images))
	metric("sdpipe_generations_total", "counter", "Finished generations by API and outcome.")
	for _, k := range slices.SortedFunc(maps.Keys(c.outcomes), cmpPair) {
		sample("sdpipe_generations_total", float64(c.outcomes[k]), "api", k[0], "outcome", k[1])
	}
	metric("sdpipe_generations_by_mode_total", "counter", "Finished generations by fast/quality mode.")
	for _, k := range slices.Sorted(maps.Keys(c.modes)) {
		sample("sdpipe_generations_by_mode_total", float64(c.modes[k]), "mode", k)
	}
	metric("sdpipe_request_duration_seconds", "histogram", "Time from admission to result of successful generations.")
	for _, api := range slices.Sorted(maps.Keys(c.latency)) {
		h := c.latency[api]
		var cum int64
		for i, le := range latencyBuckets {
			cum += h.counts[i]
			sample("sdpipe_request_duration_seconds_bucket", float64(cum), "api", api, "le", strconv.FormatFloat(le, 'g', -1, 64))
		}
		sample("sdpipe_request_duration_seconds_bucket", float64(h.n), "api", api, "le", "+Inf")
		sample("sdpipe_request_duration_seconds_sum", h.sum, "api", api)
		sample("sdpipe_request_duration_seconds_count", float64(h.n), "api", api)
	}
	c.mu.Unlock()

	counter("sdpipe_engine_submitted_total", "Requests the engine accepted.", float64(em.Submitted))
	counter("sdpipe_engine_rejected_total", "Requests the engine refused as invalid.", float64(em.Rejected))
	counter("sdpipe_engine_completed_total", "Engine requests completed.", float64(em.Completed))
	counter("sdpipe_engine_failed_total", "Engine requests failed, cancellations included.", float64(em.Failed))
	counter("sdpipe_engine_canceled_total", "Engine requests canceled.", float64(em.Canceled))
	counter("sdpipe_engine_images_total", "Images the engine produced.", float64(em.Images))
	counter("sdpipe_unet_calls_total", "UNet calls.", float64(em.UNetCalls))
	counter("sdpipe_unet_items_total", "Images over all UNet calls (their mean batch is items/calls).", float64(em.UNetItems))
	counter("sdpipe_unet_seconds_total", "Time inside UNet calls.", em.UNetTime.Seconds())
	metric("sdpipe_unet_batches_total", "counter", "UNet calls by dynamic batch size (images per call).")
	for _, k := range slices.Sorted(maps.Keys(em.BatchSizes)) {
		sample("sdpipe_unet_batches_total", float64(em.BatchSizes[k]), "size", strconv.Itoa(k))
	}
	metric("sdpipe_stage_seconds_total", "counter", "Busy time of each engine stage over completed requests.")
	sample("sdpipe_stage_seconds_total", em.Encode.Seconds(), "stage", "encode")
	sample("sdpipe_stage_seconds_total", em.Denoise.Seconds(), "stage", "denoise")
	sample("sdpipe_stage_seconds_total", em.Decode.Seconds(), "stage", "decode")
	metric("sdpipe_stage_model_seconds_total", "counter", "Time inside model calls of each stage over completed requests.")
	sample("sdpipe_stage_model_seconds_total", em.EncodeModel.Seconds(), "stage", "encode")
	sample("sdpipe_stage_model_seconds_total", em.DenoiseModel.Seconds(), "stage", "denoise")
	sample("sdpipe_stage_model_seconds_total", em.DecodeModel.Seconds(), "stage", "decode")
	counter("sdpipe_stage_queue_seconds_total", "Time completed requests waited between stages.", em.QueueWait.Seconds())
	if l := s.cfg.Load; l != nil {
		durations := func(name, help string, d map[sd.Component]time.Duration) {
			if len(d) == 0 {
				return
			}
			metric(name, "gauge", help)
			for _, c := range slices.SortedFunc(maps.Keys(d), func(a, b sd.Component) int { return cmp.Compare(a, b) }) {
				sample(name, d[c].Seconds(), "component", c.String())
			}
		}
		durations("sdpipe_model_open_seconds", "Time each model took to load at start, graph rewriting and its verification included.", l.Open)
		durations("sdpipe_model_warmup_seconds", "Time each model's warm-up took at start.", l.Warmup)
	}
}

func cmpPair(a, b [2]string) int {
	if a[0] != b[0] {
		return strings.Compare(a[0], b[0])
	}
	return strings.Compare(a[1], b[1])
}
