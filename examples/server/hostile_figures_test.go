package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHostileFigures measures what #16 asks the closing note to report,
// on a server process run as a user runs it (the default model, default
// limits except where named): its RSS while 60 clients hold 15 MB bodies,
// its open descriptors while 300 clients trickle bodies a byte a second,
// and a 300-client sdload run. After each, a good request must succeed.
// It is a measurement of a minute or more, so it runs only when asked:
//
//	SDPIPE_HOSTILE_FIGURES=1 go test -run TestHostileFigures -v -timeout 20m ./examples/server
func TestHostileFigures(t *testing.T) {
	if os.Getenv("SDPIPE_HOSTILE_FIGURES") == "" {
		t.Skip("a measurement: set SDPIPE_HOSTILE_FIGURES=1 to run it")
	}
	dir := t.TempDir()
	r := startReplica(t, dir, "hostile", 0, "-warmup=true", "-data", "none", "-body-timeout", "30s")
	pid := r.cmd.Process.Pid
	addr := strings.TrimPrefix(r.url, "http://")
	good := func(what string) {
		t.Helper()
		var out struct{ Images []string }
		if code := httpJSON(t, "POST", r.url+"/sdapi/v1/txt2img", `{"prompt":"a red circle","steps":4,"seed":1}`, &out); code != 200 || len(out.Images) != 1 {
			t.Fatalf("after %s: a good request got %d with %d images", what, code, len(out.Images))
		}
	}
	good("start")
	t.Logf("idle server: RSS %s, %d fds", mibOf(procField(t, pid, "VmRSS")), countFDs(pid))

	// 60 clients hold 15 MB bodies (all but the last byte sent).
	const held, bodySize = 60, 15 << 20
	base := procField(t, pid, "VmRSS")
	stop := sample(t, pid)
	codes := make(chan int, held)
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- holdBody(addr, bodySize, release)
		}()
	}
	time.Sleep(10 * time.Second) // they have all sent what they hold by now
	peakRSS, _ := stop()
	close(release)
	wg.Wait()
	close(codes)
	byCode := map[int]int{}
	for c := range codes {
		byCode[c]++
	}
	t.Logf("60 held 15 MB bodies: RSS %s before, peak %s (+%s); statuses %v", mibOf(base), mibOf(peakRSS), mibOf(peakRSS-base), byCode)
	good("held bodies")

	// 300 clients trickle a body a byte a second until the server's body
	// timeout (30 s here) ends them.
	const slow = 300
	stop = sample(t, pid)
	codes = make(chan int, slow)
	start := time.Now()
	for range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- trickle(addr, 1000)
		}()
	}
	time.Sleep(5 * time.Second)
	good("trickling clients (while they trickle)")
	wg.Wait()
	_, peakFDs := stop()
	close(codes)
	byCode = map[int]int{}
	for c := range codes {
		byCode[c]++
	}
	t.Logf("300 trickling clients: peak %d fds, statuses %v, all ended after %v; %d fds after", peakFDs, byCode, time.Since(start).Round(time.Second), countFDs(pid))
	good("trickling clients")

	// sdload: 300 clients for 60 s.
	load := filepath.Join(dir, "sdload")
	if out, err := exec.Command("go", "build", "-o", load, "../../cmd/sdload").CombinedOutput(); err != nil {
		t.Fatalf("go build sdload: %v\n%s", err, out)
	}
	stop = sample(t, pid)
	out, err := exec.Command(load, "-url", r.url, "-clients", "300", "-requests", "1000000", "-duration", "60s",
		"-body", `{"prompt":"a red circle","steps":4,"seed":-1}`).CombinedOutput()
	peakRSS, peakFDs = stop()
	t.Logf("sdload, 300 clients, 60 s (err %v): server peak RSS %s, %d fds\n%s", err, mibOf(peakRSS), peakFDs, out)
	if err != nil {
		t.Error("sdload: an accepted request failed")
	}
	good("sdload")
}

// holdBody sends a request whose body is all there but its last byte,
// waits for release, sends the last byte and returns the status (0 when
// the connection ended without one).
func holdBody(addr string, size int, release <-chan struct{}) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", size)
	body := []byte(`{"prompt":"` + strings.Repeat("a", size-len(`{"prompt":""}`)) + `"}`)
	done := make(chan int, 1)
	go func() { done <- readStatus(c) }() // the server may answer (429, 413) before the body ends
	if _, err := c.Write(body[:size-1]); err == nil {
		select {
		case code := <-done:
			return code
		case <-release:
		}
		c.Write(body[size-1:])
	}
	select {
	case code := <-done:
		return code
	case <-time.After(2 * time.Minute):
		return 0
	}
}

// trickle sends a body of size bytes at one byte a second and returns the
// status the server answers (0 when none).
func trickle(addr string, size int) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", size)
	done := make(chan int, 1)
	go func() { done <- readStatus(c) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for range size {
		select {
		case code := <-done:
			return code
		case <-tick.C:
			if _, err := c.Write([]byte(" ")); err != nil {
				return <-done
			}
		}
	}
	return <-done
}

// readStatus reads the status of the response on c.
func readStatus(c net.Conn) int {
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	return r.StatusCode
}

// sample polls pid's RSS and descriptors every 100 ms until the returned
// function is called, which returns their peaks.
func sample(t *testing.T, pid int) func() (rss int64, fds int) {
	stop, done := make(chan struct{}), make(chan struct{})
	var peakRSS int64
	var peakFDs int
	go func() {
		defer close(done)
		for {
			peakRSS = max(peakRSS, procField(t, pid, "VmRSS"))
			peakFDs = max(peakFDs, countFDs(pid))
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() (int64, int) {
		close(stop)
		<-done
		return peakRSS, peakFDs
	}
}

func countFDs(pid int) int {
	e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(e)
}

// procField returns a field of /proc/PID/status in bytes (0 when gone).
func procField(t *testing.T, pid int, name string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mibOf(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
