package sd

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// machineMemory returns the memory this process may still take: the
// cgroup's limit less its usage when the process runs in a limited cgroup
// (v2, else v1), else the kernel's MemAvailable; 0 when neither is known.
func machineMemory() int64 {
	if limit, used, ok := cgroupMemory(); ok {
		return max(limit-used, 0)
	}
	return memAvailable()
}

// memAvailable reads MemAvailable from /proc/meminfo.
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// cgroupMemory returns the memory limit and usage of the process's cgroup,
// when it has a limit.
func cgroupMemory() (limit, used int64, ok bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, 0, false
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "": // v2
			dir := "/sys/fs/cgroup" + parts[2]
			if l, ok := readInt(dir + "/memory.max"); ok {
				u, _ := readInt(dir + "/memory.current")
				return l, u, true
			}
		case strings.Contains(","+parts[1]+",", ",memory,"): // v1
			dir := "/sys/fs/cgroup/memory" + parts[2]
			if l, ok := readInt(dir + "/memory.limit_in_bytes"); ok && l < 1<<60 {
				u, _ := readInt(dir + "/memory.usage_in_bytes")
				return l, u, true
			}
		}
	}
	return 0, 0, false
}

// readInt reads a file holding one integer ("max" is no value).
func readInt(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return v, err == nil
}

// memoryGate admits requests while what the requests in flight may hold
// at once (need) fits the budget, first come first served: a request that
// does not fit now waits (and makes the ones behind it wait), so a large
// one is not starved.
type memoryGate struct {
	budget int64

	mu       sync.Mutex
	admitted []*memDemand
	waiters  []*memWaiter
}

// memDemand is one request's estimate as the gate counts it
// (MemoryEstimate.demand): held for the request's life, freed by its text
// encoding (without the weights), the largest freed by its other stages,
// and the offloaded text encoders' weights, loaded once for every request
// encoding at that moment.
type memDemand struct {
	held, encode, other, weights int64
}

type memWaiter struct {
	d     *memDemand
	ready chan struct{}
}

// need returns the most that the requests ds may hold at once (memory.go):
//
//	Σ(held + other) + max(0, W + Σ encode − min other)
//
// that is, every request at its largest stage outside the text encoding,
// except that while one of them encodes (the one whose other stages need
// least), the encoders' weights W and the encodings' arenas are loaded.
// For one request it is MemoryEstimate.Total; it never falls when a
// request is added.
func need(ds []*memDemand) int64 {
	if len(ds) == 0 {
		return 0
	}
	var sum, enc, w int64
	least := ds[0].other
	for _, d := range ds {
		sum += d.held + d.other
		enc += d.encode
		w = max(w, d.weights)
		least = min(least, d.other)
	}
	return sum + max(0, w+enc-least)
}

// fits reports whether d may be admitted beside the requests in flight.
// g.mu is held.
func (g *memoryGate) fits(d *memDemand) bool {
	return need(append(g.admitted[:len(g.admitted):len(g.admitted)], d)) <= g.budget
}

// acquire admits a request of demand d, waiting until it fits or ctx
// ends. need of d alone must be at most the budget.
func (g *memoryGate) acquire(ctx context.Context, d memDemand) (release func(), err error) {
	p := &d
	g.mu.Lock()
	if len(g.waiters) == 0 && g.fits(p) {
		g.admitted = append(g.admitted, p)
		g.mu.Unlock()
		return g.releaser(p), nil
	}
	w := &memWaiter{d: p, ready: make(chan struct{})}
	g.waiters = append(g.waiters, w)
	g.mu.Unlock()
	select {
	case <-w.ready:
		return g.releaser(p), nil
	case <-ctx.Done():
		g.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			g.remove(p)
		default:
			for i, x := range g.waiters {
				if x == w {
					g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
					break
				}
			}
		}
		g.wake()
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (g *memoryGate) releaser(d *memDemand) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.remove(d)
			g.wake()
			g.mu.Unlock()
		})
	}
}

// remove takes d out of the requests in flight. g.mu is held.
func (g *memoryGate) remove(d *memDemand) {
	if i := slices.Index(g.admitted, d); i >= 0 {
		g.admitted = slices.Delete(g.admitted, i, i+1)
	}
}

// wake grants the waiters at the head of the line that fit. g.mu is held.
func (g *memoryGate) wake() {
	for len(g.waiters) > 0 && g.fits(g.waiters[0].d) {
		w := g.waiters[0]
		g.waiters = g.waiters[1:]
		g.admitted = append(g.admitted, w.d)
		close(w.ready)
	}
}

// inUse returns the memory the requests admitted now may hold at once.
func (g *memoryGate) inUse() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return need(g.admitted)
}
