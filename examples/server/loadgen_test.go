package main

import (
	"errors"
	"testing"
	"time"
)

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"http://127.0.0.1:7860", true},
		{"http://localhost:80/x", true},
		{"http://[::1]:7860", true},
		{"http://127.0.0.2:1", true},
		{"http://192.0.2.1:7860", false},
		{"http://example.com", false},
		{"http://0.0.0.0:7860", false},
	}
	for _, tc := range tests {
		err := CheckLoopback(tc.url)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrNotLoopback)) {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
}

func TestPercentile(t *testing.T) {
	r := &LoadReport{Elapsed: 2 * time.Second, OK: 10}
	for i := 10; i >= 1; i-- {
		r.Latencies = append(r.Latencies, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5 * time.Millisecond}, {90, 9 * time.Millisecond}, {100, 10 * time.Millisecond}, {0, time.Millisecond}} {
		if got := r.Percentile(tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := r.Throughput(); got != 5 {
		t.Errorf("throughput %v, want 5", got)
	}
	if (&LoadReport{}).Percentile(50) != 0 {
		t.Errorf("empty report percentile")
	}
}
