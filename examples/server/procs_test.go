package main

// Helpers that run the processes the scale tests need: replicas of this
// program, nats-server and nginx, and HTTP calls on them.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// asMainEnv makes the test binary this program: a replica is the test
// binary run with it set and the server's flags (testenv.AsMain).
const asMainEnv = "SDPIPE_SERVER_AS_MAIN"

func init() { testenv.AsMain(asMainEnv, main) }

// requireServicesEnv makes these tests fail, rather than skip, when
// nats-server or nginx is missing (CI sets it after installing them).
const requireServicesEnv = "SDPIPE_REQUIRE_BROKER"

func tool(t *testing.T, pkg, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join("/usr/sbin", name); fileExists(p) {
		return p
	}
	testenv.Unavailable(t, requireServicesEnv, fmt.Sprintf("%s not found: install it (apt-get install -y %s, or scripts/services.sh install) to run this test", name, pkg))
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// proc is a child process whose end the test waits for.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

func start(t *testing.T, name, log string, cmd *exec.Cmd) *proc {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{}), log: log}
	go func() { cmd.Wait(); f.Close(); close(p.exited) }()
	t.Cleanup(func() { p.stop(t, 15*time.Second) })
	return p
}

// stop sends SIGTERM and waits, then SIGKILL.
func (p *proc) stop(t *testing.T, grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		t.Logf("%s: no exit %v after SIGTERM; killing it", p.name, grace)
		p.kill()
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitHTTP polls url until it answers 200.
func waitHTTP(t *testing.T, p *proc, url string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-p.exited:
			t.Fatalf("%s exited:\n%s", p.name, p.tail())
		default:
		}
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not up after %v:\n%s", p.name, url, limit, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startNATS runs Debian's nats-server with JetStream on a free loopback
// port and returns its URL.
func startNATS(t *testing.T, dir string) string {
	t.Helper()
	bin := tool(t, "nats-server", "nats-server")
	port := testenv.FreePort(t)
	conf := filepath.Join(dir, "nats.conf")
	err := os.WriteFile(conf, fmt.Appendf(nil, "server_name: sdpipe-test\nlisten: 127.0.0.1:%d\nmax_payload: 64MB\njetstream {\n  store_dir: %q\n}\n", port, filepath.Join(dir, "js")), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, "nats-server", filepath.Join(dir, "nats.log"), exec.Command(bin, "-c", conf))
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("nats-server exited:\n%s", p.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server not up:\n%s", p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// replica is one server process.
type replica struct {
	*proc
	id, url string
	port    int
}

func startReplica(t *testing.T, dir, id string, port int, flags ...string) *replica {
	t.Helper()
	testenv.RequireORT(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if port == 0 {
		port = testenv.FreePort(t)
	}
	args := append([]string{"-addr", fmt.Sprintf("127.0.0.1:%d", port), "-replica", id, "-warmup=false", "-grace", "3s", "-linger", "0s"}, flags...)
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), asMainEnv+"=1")
	r := &replica{id: id, port: port, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	r.proc = start(t, id, filepath.Join(dir, id+"-"+strconv.Itoa(port)+".log"), cmd)
	waitHTTP(t, r.proc, r.url+"/healthz", 60*time.Second)
	return r
}

// startNginx puts nginx in front of the replicas' ports.
func startNginx(t *testing.T, dir string, ports []int) string {
	t.Helper()
	bin := tool(t, "nginx", "nginx")
	port := testenv.FreePort(t)
	var up strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&up, "server 127.0.0.1:%d max_fails=1 fail_timeout=2s; ", p)
	}
	conf := testenv.NginxConf(dir, "nginx-error.log", port, up.String(), "proxy_connect_timeout 2s;")
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "nginx", filepath.Join(dir, "nginx.out"), exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "nginx-error.log")))
	front := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHTTP(t, p, front+"/healthz", 15*time.Second)
	return front
}

// job is the status of an async job as the API returns it.
type job struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	QueuePosition int    `json:"queue_position"`
	Progress      struct {
		Step  int `json:"step"`
		Total int `json:"total"`
	} `json:"progress"`
	Replica  string     `json:"replica"`
	Error    string     `json:"error"`
	Created  time.Time  `json:"created"`
	Started  *time.Time `json:"started"`
	Finished *time.Time `json:"finished"`
}

func httpJSON(t *testing.T, method, url, body string, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, url, r.StatusCode, b, err)
		}
	}
	return r.StatusCode
}

func submit(t *testing.T, base string, steps int, seed int64, extra ...string) job {
	t.Helper()
	var j job
	code := httpJSON(t, "POST", base+"/v1/jobs", fmt.Sprintf(`{"prompt":"a red circle on a blue background","steps":%d,"seed":%d%s}`, steps, seed, strings.Join(extra, "")), &j)
	if code != http.StatusAccepted || j.ID == "" {
		t.Fatalf("submit: %d %+v", code, j)
	}
	return j
}

func status(t *testing.T, base, id string) job {
	t.Helper()
	var j job
	if code := httpJSON(t, "GET", base+"/v1/jobs/"+id, "", &j); code != http.StatusOK {
		t.Fatalf("GET job %s: %d %+v", id, code, j)
	}
	return j
}

// result returns a done job's result body.
func result(t *testing.T, base, id string) []byte {
	t.Helper()
	r, err := http.Get(base + "/v1/jobs/" + id + "/result")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("result of %s: %d %s", id, r.StatusCode, b)
	}
	var out struct {
		Images []string `json:"images"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Images) == 0 {
		t.Fatalf("result of %s: %v, %d images", id, err, len(out.Images))
	}
	return b
}

// waitJob polls until the job is finished and returns it.
func waitJob(t *testing.T, base, id string, limit time.Duration) job {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		j := status(t, base, id)
		if j.Finished != nil {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not finished after %v: %+v", id, limit, j)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
