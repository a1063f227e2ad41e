package main

// The load: a bounded concurrent load against the image service that
// reports throughput, latency percentiles, 429s, and whether every accepted
// request completed. It only talks to loopback addresses.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNotLoopback is returned by Run for a URL whose host is not a loopback
// address: the load generator never sends load over the network.
var ErrNotLoopback = errors.New("sdload: only loopback addresses (127.0.0.1, ::1, localhost) are allowed")

// LoadConfig describes a load. The zero value of each field means its default.
type LoadConfig struct {
	URL      string // the service's base URL, e.g. http://127.0.0.1:7860
	Path     string // default /sdapi/v1/txt2img
	Body     []byte // default {"prompt":"load test","steps":4,"seed":-1}
	Clients  int    // concurrent clients; default 8
	Requests int    // requests in all; default 64
	// Duration is how long clients send (default 60s); the requests in
	// flight then finish (ctx still cancels them), so that every request
	// sent is answered.
	Duration time.Duration
	Token    string // bearer token, if the service wants one
	// Backoff is how long a client waits after a 429 before its next
	// request (0 = not at all); it never waits past Retry-After.
	Backoff time.Duration
	Client  *http.Client // default: a client with up to Clients connections
}

// LoadReport is the outcome of Run. Every request sent is counted once in OK,
// Rejected or Failed.
type LoadReport struct {
	Sent, OK, Rejected, Failed int
	Errors                     map[string]int // failure → count
	Latencies                  []time.Duration
	Elapsed                    time.Duration
	Replicas                   map[string]int // X-Replica-ID → OK responses
}

// Percentile returns the p-th (0-100) latency percentile of the OK
// requests, nearest rank.
func (r *LoadReport) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	l := slices.Clone(r.Latencies)
	slices.Sort(l)
	i := int(p/100*float64(len(l))+0.5) - 1
	return l[min(max(i, 0), len(l)-1)]
}

// Throughput returns OK requests per second.
func (r *LoadReport) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// AllAcceptedCompleted reports whether every request not refused with 429
// completed with 200.
func (r *LoadReport) AllAcceptedCompleted() bool { return r.Failed == 0 }

func (r *LoadReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sent %d in %.2fs: %d ok, %d rejected (429), %d failed; %.2f req/s\n",
		r.Sent, r.Elapsed.Seconds(), r.OK, r.Rejected, r.Failed, r.Throughput())
	fmt.Fprintf(&b, "latency p50 %v, p90 %v, p95 %v, p99 %v, max %v\n",
		r.Percentile(50).Round(time.Millisecond), r.Percentile(90).Round(time.Millisecond), r.Percentile(95).Round(time.Millisecond),
		r.Percentile(99).Round(time.Millisecond), r.Percentile(100).Round(time.Millisecond))
	if len(r.Replicas) > 0 {
		fmt.Fprintf(&b, "replicas %v\n", r.Replicas)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
		fmt.Fprintf(&b, "error ×%d: %s\n", r.Errors[k], k)
	}
	fmt.Fprintf(&b, "every accepted request completed: %v", r.AllAcceptedCompleted())
	return b.String()
}

// CheckLoopback returns ErrNotLoopback unless rawURL's host is loopback.
func CheckLoopback(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("sdload: %w", err)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w: %q", ErrNotLoopback, host)
}

// RunLoad sends cfg's load and waits for every request to finish or ctx to
// end. It is safe for concurrent use.
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	if err := CheckLoopback(cfg.URL); err != nil {
		return nil, err
	}
	if cfg.Path == "" {
		cfg.Path = "/sdapi/v1/txt2img"
	}
	if cfg.Body == nil {
		cfg.Body = []byte(`{"prompt":"load test","steps":4,"seed":-1}`)
	}
	cfg.Clients = max(cfg.Clients, 0)
	if cfg.Clients == 0 {
		cfg.Clients = 8
	}
	if cfg.Requests <= 0 {
		cfg.Requests = 64
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 60 * time.Second
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Clients, MaxConnsPerHost: cfg.Clients}}
	}
	sending, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	target := strings.TrimSuffix(cfg.URL, "/") + cfg.Path

	rep := &LoadReport{Errors: map[string]int{}, Replicas: map[string]int{}}
	var mu sync.Mutex
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.Clients {
		wg.Go(func() {
			for next.Add(1) <= int64(cfg.Requests) && sending.Err() == nil {
				t0 := time.Now()
				code, replica, retry, err := sendOne(ctx, client, target, cfg.Token, cfg.Body)
				d := time.Since(t0)
				if code == http.StatusTooManyRequests && cfg.Backoff > 0 {
					wait := cfg.Backoff
					if retry > 0 {
						wait = min(wait, retry)
					}
					select {
					case <-time.After(wait):
					case <-sending.Done():
					}
				}
				mu.Lock()
				rep.Sent++
				switch {
				case err == nil && code == http.StatusOK:
					rep.OK++
					rep.Latencies = append(rep.Latencies, d)
					if replica != "" {
						rep.Replicas[replica]++
					}
				case err == nil && code == http.StatusTooManyRequests:
					rep.Rejected++
				default:
					rep.Failed++
					msg := fmt.Sprintf("status %d", code)
					if err != nil {
						msg = err.Error()
					}
					rep.Errors[msg]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// sendOne posts one request and checks that an OK response holds images.
func sendOne(ctx context.Context, c *http.Client, target, token string, body []byte) (code int, replica string, retry time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, "", 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", 0, err
	}
	replica = resp.Header.Get("X-Replica-ID")
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		retry = time.Duration(s) * time.Second
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, replica, retry, nil
	}
	var out struct {
		Images          []string `json:"images"`
		GeneratedImages []string `json:"generated_images"`
		Data            []any    `json:"data"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return resp.StatusCode, replica, 0, fmt.Errorf("sdload: bad response: %w", err)
	}
	if len(out.Images)+len(out.GeneratedImages)+len(out.Data) == 0 {
		return resp.StatusCode, replica, 0, errors.New("sdload: response has no images")
	}
	return resp.StatusCode, replica, 0, nil
}
