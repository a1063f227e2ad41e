package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"html"
	"image/png"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
)

// lookTool finds a Debian tool, or skips the test saying how to install it.
func lookTool(t *testing.T, pkg string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		if p := filepath.Join("/usr/sbin", n); fileExists(p) {
			return p
		}
	}
	t.Skipf("%s not found: install it (apt-get install -y %s) to run this end-to-end test", names[0], pkg)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// chromium runs headless Chromium on url with extra flags and returns its
// standard output.
func chromium(t *testing.T, bin, url string, flags ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--user-data-dir=" + t.TempDir(), "--virtual-time-budget=60000"}, flags...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return out
}

// TestWebPageChromium drives the page in headless Chromium: the page fills
// the form from its query, clicks Generate twice, follows the async job's
// progress, and shows the images and the session's gallery. The dumped DOM
// must hold the PNGs.
func TestWebPageChromium(t *testing.T) {
	bin := lookTool(t, "chromium", "chromium", "chromium-browser", "google-chrome")
	s, ts := newServer(t, Config{ModelName: "generated-tiny-v2"})
	q := url.Values{
		"prompt": {"a red circle on a blue background"}, "negative_prompt": {"blurry"}, "seed": {"7"},
		"steps": {"6"}, "sampler": {"Euler a"}, "autorun": {"2"},
	}
	dom := string(chromium(t, bin, ts.URL+"/?"+q.Encode(), "--dump-dom"))
	if !strings.Contains(dom, `data-state="done"`) {
		st := regexp.MustCompile(`id="status"[^>]*>([^<]*)`).FindStringSubmatch(dom)
		t.Fatalf("the page did not finish; status %q", st)
	}
	img := regexp.MustCompile(`<img id="result"[^>]*src="data:image/png;base64,([^"]+)"`).FindStringSubmatch(dom)
	if img == nil {
		t.Fatal("no result <img> with a data: PNG in the DOM")
	}
	raw, err := base64.StdEncoding.DecodeString(img[1])
	if err != nil {
		t.Fatal(err)
	}
	pic, err := png.Decode(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("result image: %v", err)
	}
	if b := pic.Bounds(); b.Dx() != 64 || b.Dy() != 64 {
		t.Errorf("result image is %v", b)
	}
	params := regexp.MustCompile(`(?s)<pre id="params">(.*?)</pre>`).FindStringSubmatch(dom)
	if params == nil || !strings.Contains(html.UnescapeString(params[1]), "a red circle on a blue background") || !strings.Contains(params[1], "Seed: 8") || !strings.Contains(params[1], "Steps: 6") {
		t.Errorf("parameters shown: %q", params)
	}
	gallery := regexp.MustCompile(`(?s)<div id="gallery">(.*?)</div>`).FindStringSubmatch(dom)
	if gallery == nil || strings.Count(gallery[1], `src="data:image/png;base64,`) != 2 {
		t.Errorf("the gallery does not hold the session's 2 images")
	}
	s.met.mu.Lock()
	n := s.met.outcomes[[2]string{apiJobs, "ok"}]
	s.met.mu.Unlock()
	if n != 2 {
		t.Errorf("the page ran %d async jobs, want 2", n)
	}
	if p := os.Getenv("SDPIPE_SCREENSHOT"); p != "" {
		q.Set("autorun", "4")
		chromium(t, bin, ts.URL+"/?"+q.Encode(), "--hide-scrollbars", "--window-size=1280,760", "--screenshot="+p)
		t.Logf("screenshot written to %s", p)
	}
}

// openSecondModel opens another instance of the tiny model, for a second
// replica.
func openSecondModel(t *testing.T) *sd.Model {
	t.Helper()
	openModel(t)
	dir, err := models.DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := sd.Open(t.Context(), dir, sd.WithBatching(4, 20*time.Millisecond), sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// TestNginxRoundRobin runs two replicas behind Debian's nginx on loopback
// and checks that every request completes exactly once and both replicas
// served.
func TestNginxRoundRobin(t *testing.T) {
	bin := lookTool(t, "nginx", "nginx")
	_, a := newServerOn(t, openModel(t), Config{ReplicaID: "replica-a"})
	_, b := newServerOn(t, openSecondModel(t), Config{ReplicaID: "replica-b"})
	dir := t.TempDir()
	port := testenv.FreePort(t)
	upstream := fmt.Sprintf("server %s; server %s;", strings.TrimPrefix(a.URL, "http://"), strings.TrimPrefix(b.URL, "http://"))
	conf := testenv.NginxConf(dir, "error.log", port, upstream, "proxy_next_upstream off; # never send a generation twice")
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT) // graceful stop
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	front := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v\n%s\n%s", err, stderr.String(), log)
		default:
		}
		if r := get(t, front+"/healthz"); r.code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nginx did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}

	const n, conc = 16, 4
	type outcome struct {
		code    int
		replica string
		seeds   []int64
	}
	results := make([]outcome, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := post(t, front+"/sdapi/v1/txt2img", fmt.Sprintf(`{"prompt":"replica test","steps":4,"seed":%d}`, 100+i))
			o := outcome{code: r.code, replica: r.header.Get("X-Replica-ID")}
			if r.code == http.StatusOK {
				var out struct{ Info string }
				r.json(t, &out)
				var info struct {
					AllSeeds []int64 `json:"all_seeds"`
				}
				_ = json.Unmarshal([]byte(out.Info), &info)
				o.seeds = info.AllSeeds
			}
			results[i] = o
		})
	}
	wg.Wait()
	served := map[string]int{}
	for i, o := range results {
		if o.code != http.StatusOK || len(o.seeds) != 1 || o.seeds[0] != int64(100+i) {
			t.Errorf("request %d: status %d, seeds %v", i, o.code, o.seeds)
		}
		served[o.replica]++
	}
	if served["replica-a"] == 0 || served["replica-b"] == 0 || served["replica-a"]+served["replica-b"] != n {
		t.Errorf("replicas served %v, want both and %d in all", served, n)
	}
	// each replica ran exactly the generations it answered: none ran twice
	for _, rep := range []struct{ id, url string }{{"replica-a", a.URL}, {"replica-b", b.URL}} {
		m := regexp.MustCompile(`sdpipe_generations_total\{api="a1111",outcome="ok"\} (\d+)`).FindStringSubmatch(string(get(t, rep.url+"/metrics").body))
		if m == nil || m[1] != strconv.Itoa(served[rep.id]) {
			t.Errorf("%s ran %v generations, answered %d", rep.id, m, served[rep.id])
		}
	}
	t.Logf("served %v", served)
}
