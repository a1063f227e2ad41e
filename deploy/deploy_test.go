// Package deploy holds no Go code: these tests check the container image's
// files (the Dockerfile at the root and entrypoint.sh) without building it,
// and, when SDPIPE_IMAGE names a built image, run it. The grid's Kubernetes
// and AWS Batch manifests are checked in examples/grid (deploy_test.go),
// where the shard resolution they feed lives.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/server/natsqueue"
)

// stubs makes a folder of programs named like the image's that print
// their name and arguments, one a line.
func stubs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"server", "grid", "txt2img"} {
		script := "#!/bin/sh\necho " + name + "\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// entrypoint runs entrypoint.sh under sh (dash on Debian, as in the image)
// with the stubs first on PATH and only the environment given.
func entrypoint(t *testing.T, bin string, env []string, args ...string) ([]string, string, error) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"entrypoint.sh"}, args...)...)
	cmd.Env = append([]string{"PATH=" + bin + ":/usr/bin:/bin", "SDPIPE_ML_MODEL=/nonexistent"}, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"), errb.String(), err
}

func TestEntrypoint(t *testing.T) {
	bin := stubs(t)
	model := t.TempDir() // an /opt/ml/model stand-in
	os.WriteFile(filepath.Join(model, "model_index.json"), []byte("{}"), 0o644)
	root := t.TempDir()
	for _, d := range []string{"shard-0", "shard-1", "other"} {
		os.Mkdir(filepath.Join(root, d), 0o755)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"no argument serves on 8080", nil, nil, []string{"server", "-addr", "0.0.0.0:8080", "-data", "none"}},
		{"SageMaker's serve", nil, []string{"serve"}, []string{"server", "-addr", "0.0.0.0:8080", "-data", "none"}},
		{"SageMaker's port", []string{"SAGEMAKER_BIND_TO_PORT=9000", "PORT=7000"}, []string{"serve"}, []string{"server", "-addr", "0.0.0.0:9000", "-data", "none"}},
		{"PORT", []string{"PORT=7000"}, []string{"serve"}, []string{"server", "-addr", "0.0.0.0:7000", "-data", "none"}},
		{"flags from the environment, then the arguments", []string{"SDPIPE_SERVE_FLAGS=-queue 64  -batch 2"}, []string{"serve", "-token", "a b"},
			[]string{"server", "-addr", "0.0.0.0:8080", "-data", "none", "-queue", "64", "-batch", "2", "-token", "a b"}},
		{"SDPIPE_MODEL", []string{"SDPIPE_MODEL=/models/my model"}, []string{"serve"}, []string{"server", "-addr", "0.0.0.0:8080", "-data", "none", "-model", "/models/my model"}},
		{"SDPIPE_DATA", []string{"SDPIPE_DATA=/data/jobs"}, []string{"serve"}, []string{"server", "-addr", "0.0.0.0:8080", "-data", "/data/jobs"}},
		{"SageMaker's model folder", []string{"SDPIPE_ML_MODEL=" + model}, []string{"serve"}, []string{"server", "-addr", "0.0.0.0:8080", "-data", "none", "-model", model}},
		{"grid as it is", nil, []string{"grid", "search", "-dir", "x", "-prompt", "a fox"}, []string{"grid", "search", "-dir", "x", "-prompt", "a fox"}},
		{"grid-shard, Kubernetes", []string{"JOB_COMPLETION_INDEX=2"}, []string{"grid-shard", "/data/grid", "-config", "/etc/g.json"},
			[]string{"grid", "run", "-out", "/data/grid/shard-2", "-config", "/etc/g.json"}},
		{"grid-shard, AWS Batch, a model", []string{"AWS_BATCH_JOB_ARRAY_INDEX=7", "SDPIPE_MODEL=/m"}, []string{"grid-shard", "/mnt/efs/grid"},
			[]string{"grid", "run", "-out", "/mnt/efs/grid/shard-7", "-model", "/m"}},
		{"grid-shard, Slurm", []string{"SLURM_ARRAY_TASK_ID=5"}, []string{"grid-shard", "/scratch/g", "-n", "2"},
			[]string{"grid", "run", "-out", "/scratch/g/shard-5", "-n", "2"}},
		{"grid-merge", nil, []string{"grid-merge", root, "-sheet=false"},
			[]string{"grid", "merge", "-sheet=false", "-out", root + "/merged", root + "/shard-0", root + "/shard-1"}},
		{"txt2img", []string{"SDPIPE_MODEL=/m"}, []string{"txt2img", "-prompt", "a red circle", "-out", "/data/a.png"},
			[]string{"txt2img", "-model", "/m", "-prompt", "a red circle", "-out", "/data/a.png"}},
		{"any other command", nil, []string{"echo", "hello  there"}, []string{"hello  there"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, stderr, err := entrypoint(t, bin, tc.env, tc.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ran (-want +got):\n%s", d)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"grid-shard without an index", []string{"grid-shard", "/data"}, "no array index"},
		{"grid-shard without a root", []string{"grid-shard"}, "usage: grid-shard ROOT"},
		{"grid-merge without shards", []string{"grid-merge", t.TempDir()}, "no shard-* folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, stderr, err := entrypoint(t, bin, nil, tc.args...)
			if err == nil || !strings.Contains(stderr, tc.want) || got[0] == "grid" {
				t.Errorf("err %v, stderr %q, ran %q; want a failure saying %q", err, stderr, got, tc.want)
			}
		})
	}
	out, _, err := entrypoint(t, bin, nil, "help")
	if help := strings.Join(out, "\n"); err != nil || !strings.Contains(help, "serve [server flags]") || strings.Contains(help, "set -eu") {
		t.Errorf("help: %v\n%s", err, help)
	}
}

// dockerfile is the root Dockerfile, split into stages of instructions.
type stage struct {
	name  string
	from  string
	instr [][2]string // instruction, rest of the line
}

func readDockerfile(t *testing.T) (args map[string]string, stages []stage) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	args = map[string]string{}
	sc := bufio.NewScanner(f)
	line := ""
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			line += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		line += l
		fields := strings.Fields(line)
		line = ""
		if len(fields) == 0 {
			continue
		}
		op, rest := strings.ToUpper(fields[0]), strings.Join(fields[1:], " ")
		switch {
		case op == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(rest, "=")
			args[k] = v
		case op == "FROM":
			s := stage{from: fields[1]}
			if len(fields) == 4 && strings.EqualFold(fields[2], "AS") {
				s.name = fields[3]
			}
			stages = append(stages, s)
		case len(stages) == 0:
			t.Fatalf("Dockerfile: %s before FROM", op)
		default:
			stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, [2]string{op, rest})
		}
	}
	return args, stages
}

// TestDockerfileLayout checks, without building, that the runtime stage
// holds what the entrypoint runs and where the programs look for it.
func TestDockerfileLayout(t *testing.T) {
	args, stages := readDockerfile(t)
	for _, a := range []string{"GO_IMAGE", "NODE_IMAGE", "RUNTIME_IMAGE"} {
		if args[a] == "" {
			t.Errorf("no default for ARG %s", a)
		}
	}
	if len(stages) != 3 || stages[0].name != "build" || stages[1].name != "ort" {
		t.Fatalf("stages %+v: want build, ort and the runtime", stages)
	}
	final := stages[2]
	if final.from != "${RUNTIME_IMAGE}" {
		t.Errorf("runtime stage from %s", final.from)
	}
	built := map[string]bool{}
	for _, in := range stages[0].instr {
		if in[0] == "RUN" && strings.Contains(in[1], "go build") {
			for _, f := range strings.Fields(in[1]) {
				if strings.HasPrefix(f, "./examples/") {
					if _, err := os.Stat(filepath.Join("..", f, "main.go")); err != nil {
						t.Errorf("the build stage builds %s: %v", f, err)
					}
					built[filepath.Base(f)] = true
				}
			}
		}
	}
	ortUsesSetup := false
	for _, in := range stages[1].instr {
		ortUsesSetup = ortUsesSetup || (in[0] == "COPY" && strings.HasPrefix(in[1], "scripts/setup.sh "))
	}
	if !ortUsesSetup {
		t.Error("the ort stage does not install the library with scripts/setup.sh")
	}
	env := map[string]string{}
	copied := map[string]string{} // destination → source
	var entry, cmd, expose, user string
	for _, in := range final.instr {
		switch in[0] {
		case "ENV":
			for _, kv := range strings.Fields(in[1]) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		case "COPY":
			f := strings.Fields(in[1])
			if strings.HasPrefix(f[0], "--from=") {
				f = f[1:]
			}
			dst := f[len(f)-1]
			for _, src := range f[:len(f)-1] {
				if strings.HasSuffix(dst, "/") {
					copied[dst+filepath.Base(src)] = src
				} else {
					copied[dst] = src
				}
			}
		case "ENTRYPOINT":
			entry = in[1]
		case "CMD":
			cmd = in[1]
		case "EXPOSE":
			expose = in[1]
		case "USER":
			user = in[1]
		}
	}
	for name := range map[string]bool{"server": true, "grid": true, "txt2img": true} {
		if !built[name] || copied["/usr/local/bin/"+name] != "/out/"+name {
			t.Errorf("%s: built %v, copied from %q; the entrypoint runs it from PATH", name, built[name], copied["/usr/local/bin/"+name])
		}
	}
	lib := env["ONNXRUNTIME_SHARED_LIBRARY_PATH"]
	if lib == "" || copied[lib] == "" {
		t.Errorf("ONNXRUNTIME_SHARED_LIBRARY_PATH %q is not a copied file (copied: %v)", lib, copied)
	}
	if copied["/usr/local/bin/sdpipe"] != "deploy/entrypoint.sh" || entry != `["/usr/local/bin/sdpipe"]` {
		t.Errorf("entrypoint %s, copied from %q", entry, copied["/usr/local/bin/sdpipe"])
	}
	if cmd != `["serve"]` || expose != "8080" {
		t.Errorf("CMD %s, EXPOSE %s: want serve on 8080 (SageMaker's contract)", cmd, expose)
	}
	if user == "" || user == "root" || user == "0" {
		t.Errorf("the image runs as %q", user)
	}
	if env["SDPIPE_CACHE_DIR"] == "" {
		t.Error("no SDPIPE_CACHE_DIR: the default model would go under the user's home")
	}
}

// image returns the built image to run (SDPIPE_IMAGE, set by .ci/run after
// scripts/image.sh build), or skips.
func image(t *testing.T) string {
	t.Helper()
	img := os.Getenv("SDPIPE_IMAGE")
	if img == "" {
		t.Skip("SDPIPE_IMAGE is not set: build the image with scripts/image.sh build and set it to the tag to run it")
	}
	return img
}

// podman runs scripts/image.sh podman ARGS.
func podman(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	return exec.CommandContext(t.Context(), filepath.Join("..", "scripts", "image.sh"), append([]string{"podman"}, args...)...).CombinedOutput()
}

// TestImageServe runs the image as SageMaker does ("serve", port from
// SAGEMAKER_BIND_TO_PORT) and calls GET /ping and POST /invocations.
func TestImageServe(t *testing.T) {
	img := image(t)
	port := testenv.FreePort(t)
	name := fmt.Sprintf("sdpipe-serve-test-%d", os.Getpid())
	if out, err := podman(t, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
		"-e", fmt.Sprintf("SAGEMAKER_BIND_TO_PORT=%d", port), img, "serve"); err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := podman(t, "logs", name)
			t.Logf("container log:\n%s", out)
		}
		podman(t, "stop", "-t", "10", name)
		podman(t, "rm", "-f", name) // not run with --rm, so a container that exits keeps its log
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitOK(t, base+"/ping", 60*time.Second, 200*time.Millisecond, nil)
	r, err := http.Post(base+"/invocations", "application/json", strings.NewReader(`{"prompt":"a red circle on a blue background","num_inference_steps":4,"seed":3}`))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var out struct {
		Images []string `json:"generated_images"`
	}
	if err := json.NewDecoder(r.Body).Decode(&out); err != nil || r.StatusCode != http.StatusOK || len(out.Images) != 1 {
		t.Fatalf("POST /invocations: %d, %v, %d images", r.StatusCode, err, len(out.Images))
	}
	b, err := base64.StdEncoding.DecodeString(out.Images[0])
	if err != nil {
		t.Fatal(err)
	}
	pic, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if pic.Bounds().Dx() != 64 {
		t.Errorf("image %v, want the default model's 64×64", pic.Bounds())
	}
}

// TestImageGridAndTxt2img runs the grid's two shards as an Indexed Job's
// pods would (JOB_COMPLETION_INDEX, GRID_SHARDS, a shared volume), merges
// them, and makes one image with txt2img, all on a read-only root.
func TestImageGridAndTxt2img(t *testing.T) {
	img := image(t)
	data := t.TempDir()
	if err := os.Chmod(data, 0o777); err != nil { // the image's user writes it
		t.Fatal(err)
	}
	cfg := `{"subjects":["a red circle","a blue square"],"styles":["flat"],"images":2,"seed":5,"steps":3}`
	if err := os.WriteFile(filepath.Join(data, "grid.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := podman(t, append([]string{"run", "--rm", "--read-only", "--tmpfs", "/tmp", "-v", data + ":/data"}, args...)...)
		if err != nil {
			t.Fatalf("podman run %q: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for k := range 2 {
		out := run("-e", fmt.Sprintf("JOB_COMPLETION_INDEX=%d", k), "-e", "GRID_SHARDS=2", img,
			"grid-shard", "/data/grid", "-config", "/data/grid.json", "-threads", "1")
		if !strings.Contains(out, fmt.Sprintf(`in shard "%d/2"`, k)) {
			t.Errorf("shard %d printed %q", k, out)
		}
	}
	if out := run(img, "grid-merge", "/data/grid"); !strings.Contains(out, "merged 4 records") {
		t.Errorf("merge printed %q", out)
	}
	b, err := os.ReadFile(filepath.Join(data, "grid", "merged", "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var shards []string
	for l := range strings.Lines(string(b)) {
		var r struct {
			Shard string `json:"shard"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		shards = append(shards, r.Shard)
	}
	if slices.Sort(shards); !slices.Equal(shards, []string{"0/2", "0/2", "1/2", "1/2"}) {
		t.Errorf("merged records from shards %v", shards)
	}
	run(img, "txt2img", "-steps", "3", "-seed", "9", "-out", "/data/one.png")
	f, err := os.Open(filepath.Join(data, "one.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("txt2img's PNG: %v", err)
	}
}

// TestServiceManifest checks that deploy/kubernetes/service.yaml scales
// on the queue the replicas really use, and starts them with the broker.
func TestServiceManifest(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("kubernetes", "service.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	kinds := map[string]map[string]any{}
	for {
		var o map[string]any
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kinds[o["kind"].(string)] = o
	}
	get := func(v any, path ...any) any {
		for _, p := range path {
			switch k := p.(type) {
			case string:
				m, _ := v.(map[string]any)
				v = m[k]
			case int:
				l, _ := v.([]any)
				if k >= len(l) {
					return nil
				}
				v = l[k]
			}
		}
		return v
	}
	trig := get(kinds["ScaledObject"], "spec", "triggers", 0, "metadata")
	if get(trig, "stream") != natsqueue.Stream || get(trig, "consumer") != natsqueue.Consumer {
		t.Errorf("KEDA trigger %v: want stream %s, consumer %s", trig, natsqueue.Stream, natsqueue.Consumer)
	}
	if get(kinds["ScaledObject"], "spec", "scaleTargetRef", "name") != get(kinds["Deployment"], "metadata", "name") {
		t.Error("the ScaledObject does not scale the Deployment")
	}
	args := fmt.Sprint(get(kinds["Deployment"], "spec", "template", "spec", "containers", 0, "args"))
	if !strings.HasPrefix(args, "[serve -broker nats://") {
		t.Errorf("the replicas run %s, want serve with -broker", args)
	}
}
