package sd

import (
	"bufio"
	"bytes"
	"context"
	"os"
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

// memoryGate admits requests while the sum of their estimates fits the
// budget, first come first served: a request that does not fit now waits
// (and makes the ones behind it wait), so a large one is not starved.
type memoryGate struct {
	budget int64

	mu      sync.Mutex
	used    int64
	waiters []*memWaiter
}

type memWaiter struct {
	n     int64
	ready chan struct{}
}

// acquire takes n bytes of the budget, waiting until they fit or ctx
// ends. n must be at most the budget.
func (g *memoryGate) acquire(ctx context.Context, n int64) (release func(), err error) {
	g.mu.Lock()
	if len(g.waiters) == 0 && g.used+n <= g.budget {
		g.used += n
		g.mu.Unlock()
		return g.releaser(n), nil
	}
	w := &memWaiter{n: n, ready: make(chan struct{})}
	g.waiters = append(g.waiters, w)
	g.mu.Unlock()
	select {
	case <-w.ready:
		return g.releaser(n), nil
	case <-ctx.Done():
		g.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			g.used -= n
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

func (g *memoryGate) releaser(n int64) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.used -= n
			g.wake()
			g.mu.Unlock()
		})
	}
}

// wake grants the waiters at the head of the line that fit. g.mu is held.
func (g *memoryGate) wake() {
	for len(g.waiters) > 0 && g.used+g.waiters[0].n <= g.budget {
		w := g.waiters[0]
		g.waiters = g.waiters[1:]
		g.used += w.n
		close(w.ready)
	}
}

// inUse returns the bytes admitted now.
func (g *memoryGate) inUse() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.used
}
