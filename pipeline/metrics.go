package pipeline

import (
	"context"
	"errors"
	"sync"
	"time"
)

// RequestMetrics are one request's timings. Each stage's span starts when
// the previous one ends plus the stage's queue wait, so a timeline can be
// drawn from Submitted and the durations.
type RequestMetrics struct {
	Submitted    time.Time
	EncodeQueue  time.Duration // Submit to the start of encoding
	Encode       time.Duration
	EncodeModel  time.Duration // inside the text encoder (and VAE encoder)
	DenoiseQueue time.Duration // end of encoding to the start of denoising
	Denoise      time.Duration
	DenoiseModel time.Duration // inside UNet calls
	DecodeQueue  time.Duration
	Decode       time.Duration
	DecodeModel  time.Duration // inside the VAE decoder
	Total        time.Duration // Submit to result
	Steps        int           // UNet calls made
	// ShallowSteps counts the UNet calls that ran step caching's shallow
	// model (StepCacheDenoiser); 0 without step caching, and for a batch
	// with per-request LoRAs, which runs the full UNet every step.
	ShallowSteps int
	BatchSize    int // requests that shared the UNet calls
}

// ModelTime is the time spent inside model calls.
func (m RequestMetrics) ModelTime() time.Duration {
	return m.EncodeModel + m.DenoiseModel + m.DecodeModel
}

// StepsPerSecond is the denoise stage's rate.
func (m RequestMetrics) StepsPerSecond() float64 {
	if m.Denoise <= 0 {
		return 0
	}
	return float64(m.Steps) / m.Denoise.Seconds()
}

// Metrics are a pipeline's aggregate counters since New.
type Metrics struct {
	Submitted, Rejected     int64 // accepted requests; requests refused as invalid
	Completed, Failed       int64
	Canceled                int64         // included in Failed
	InFlight                int64         // accepted and not yet finished
	Images                  int64         // images produced
	UNetCalls               int64         // UNet calls
	UNetItems               int64         // batch items over all UNet calls
	UNetTime                time.Duration // inside UNet calls
	BatchSizes              map[int]int64 // UNet batch size → calls
	Encode, Denoise, Decode time.Duration // busy time of each stage, over completed requests
	EncodeModel             time.Duration
	DenoiseModel            time.Duration
	DecodeModel             time.Duration
	QueueWait               time.Duration // time completed requests spent waiting between stages
}

type metricsCollector struct {
	mu sync.Mutex
	m  Metrics
}

func (c *metricsCollector) init() { c.m.BatchSizes = map[int]int64{} }

func (c *metricsCollector) accepted() {
	c.mu.Lock()
	c.m.Submitted++
	c.m.InFlight++
	c.mu.Unlock()
}

func (c *metricsCollector) rejected() {
	c.mu.Lock()
	c.m.Rejected++
	c.mu.Unlock()
}

func (c *metricsCollector) failed(err error) {
	c.mu.Lock()
	c.m.Failed++
	c.m.InFlight--
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		c.m.Canceled++
	}
	c.mu.Unlock()
}

func (c *metricsCollector) completed(r *RequestMetrics, images int) {
	c.mu.Lock()
	c.m.Completed++
	c.m.InFlight--
	c.m.Images += int64(images)
	c.m.Encode += r.Encode
	c.m.Denoise += r.Denoise
	c.m.Decode += r.Decode
	c.m.EncodeModel += r.EncodeModel
	c.m.DenoiseModel += r.DenoiseModel
	c.m.DecodeModel += r.DecodeModel
	c.m.QueueWait += r.EncodeQueue + r.DenoiseQueue + r.DecodeQueue
	c.mu.Unlock()
}

func (c *metricsCollector) unetCall(items int, d time.Duration) {
	c.mu.Lock()
	c.m.UNetCalls++
	c.m.UNetItems += int64(items)
	c.m.UNetTime += d
	c.m.BatchSizes[items]++
	c.mu.Unlock()
}

// Metrics returns a snapshot of the pipeline's counters. It is safe for
// concurrent use.
func (p *Pipeline) Metrics() Metrics {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	m := p.m.m
	m.BatchSizes = make(map[int]int64, len(p.m.m.BatchSizes))
	for k, v := range p.m.m.BatchSizes {
		m.BatchSizes[k] = v
	}
	return m
}
