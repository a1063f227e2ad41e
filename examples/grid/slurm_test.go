package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// asMainEnv makes the test binary the grid program: a Slurm job runs the
// test binary with it set and the grid's own arguments (testenv.AsMain).
const asMainEnv = "SDPIPE_GRID_AS_MAIN"

func init() { testenv.AsMain(asMainEnv, main) }

// requireSlurmEnv makes the Slurm test fail, rather than skip, when no
// cluster can be started (CI sets it after installing slurm-wlm).
const requireSlurmEnv = "SDPIPE_REQUIRE_SLURM"

// slurmCluster is a private single-node cluster started by
// scripts/slurm.sh for one test.
type slurmCluster struct {
	conf string // its slurm.conf, for SLURM_CONF
	dir  string
}

// startSlurm starts a cluster in a temporary folder and stops it when the
// test ends. It skips the test with the reason when Slurm cannot run here
// (not installed, not root), unless SDPIPE_REQUIRE_SLURM is set.
func startSlurm(t *testing.T) *slurmCluster {
	t.Helper()
	script := filepath.Join(testenv.ModuleRoot(), "scripts", "slurm.sh")
	if out, err := exec.Command(script, "check").CombinedOutput(); err != nil {
		testenv.Unavailable(t, requireSlurmEnv, fmt.Sprintf("Slurm cannot run here: %s (%v); scripts/slurm.sh install sets it up", strings.TrimSpace(string(out)), err))
	}
	// a short path: munge's socket must fit a sockaddr_un (108 bytes)
	dir, err := os.MkdirTemp("", "slurm-")
	if err != nil {
		t.Fatal(err)
	}
	c := &slurmCluster{dir: dir, conf: filepath.Join(dir, "slurm.conf")}
	t.Cleanup(func() {
		if out, err := exec.Command(script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("stopping Slurm: %v\n%s", err, out)
		}
		if t.Failed() {
			for _, name := range []string{"slurmctld.log", "slurmd.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, "log", name))
				t.Logf("%s (tail):\n%s", name, tail(string(b), 3000))
			}
		}
		os.RemoveAll(dir)
	})
	start := time.Now()
	// with our pid, the cluster stops itself should this process die
	// before the cleanup runs
	if out, err := exec.Command(script, "start", dir, strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
		testenv.Unavailable(t, requireSlurmEnv, fmt.Sprintf("starting Slurm: %v\n%s", err, out))
	}
	t.Logf("Slurm cluster up in %.1fs", time.Since(start).Seconds())
	return c
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// command runs a Slurm client command against the cluster.
func (c *slurmCluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cleanEnv(), "SLURM_CONF="+c.conf)
	return cmd
}

// cleanEnv is the environment without the index variables of schedulers,
// so that the test behaves the same inside a job of some other cluster.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "SLURM_") || strings.HasPrefix(name, "AWS_BATCH_") ||
			name == "JOB_COMPLETION_INDEX" || name == "GRID_SHARDS" || name == asMainEnv {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// sbatch submits a batch script and returns the job id.
func (c *slurmCluster) sbatch(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.command(t.Context(), "sbatch", append([]string{"--parsable"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("sbatch %q: %v\n%s", args, err, out)
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(out)), ";")
	if _, err := strconv.Atoi(id); err != nil {
		t.Fatalf("sbatch printed %q, want a job id", out)
	}
	return id
}

// wait blocks until none of the jobs is pending or running, and returns
// each array task's state ("COMPLETED", "FAILED", …) by its job id
// ("12_3"). With no accounting database, finished jobs are read from
// scontrol while slurmctld still holds them (MinJobAge, 300 s by default).
func (c *slurmCluster) wait(t *testing.T, limit time.Duration, ids ...string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		states := map[string]string{}
		busy := false
		for _, id := range ids {
			out, err := c.command(t.Context(), "scontrol", "show", "job", "-o", id).CombinedOutput()
			if err != nil {
				t.Fatalf("scontrol show job %s: %v\n%s", id, err, out)
			}
			for line := range strings.Lines(string(out)) {
				f := fields(line)
				name := f["JobId"]
				if f["ArrayJobId"] != "" && f["ArrayTaskId"] != "" {
					name = f["ArrayJobId"] + "_" + f["ArrayTaskId"]
				}
				states[name] = f["JobState"]
				switch f["JobState"] {
				case "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED":
					busy = true
				}
			}
		}
		if !busy {
			return states
		}
		if time.Now().After(deadline) {
			c.command(context.Background(), "scancel", ids...).Run()
			t.Fatalf("jobs %v still busy after %v: %v", ids, limit, states)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fields splits a line of "scontrol -o" into its Key=Value pairs.
func fields(line string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Fields(line) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// slurmGridConfig is the grid the Slurm test runs: testConfig, or with
// SDPIPE_SLURM_GRID set, a JSON config file (for measuring a larger grid;
// its model "" is the default model).
func slurmGridConfig(t *testing.T, model string) (Config, string) {
	if p := os.Getenv("SDPIPE_SLURM_GRID"); p != "" {
		c, err := LoadConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		return c, p
	}
	return testConfig(model), "testConfig"
}

// TestSlurmArray runs the grid as a Slurm array job on a private
// single-node cluster: three array tasks, each a shard of the grid chosen
// by the grid from the variables Slurm sets (a non-zero-based array with a
// step, --array=1-5:2, so that shard k is task 1+2k), each on one CPU, and
// then a merge job that depends on the array. The shards' records and
// images must equal those of the same grid run in one process (the same
// program, outside Slurm), and the merged folder must hold them all and
// answer searches. It logs both wall times.
func TestSlurmArray(t *testing.T) {
	model, _ := setup(t)
	cl := startSlurm(t)
	c, name := slurmGridConfig(t, model)
	root := t.TempDir()
	cfgPath := filepath.Join(root, "grid.json")
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	items := c.Items()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// every run on one intra-op thread per model, so that the pixels do
	// not depend on the thread count and one CPU is one task's share
	gridArgs := []string{"-config", cfgPath, "-threads", "1"}

	// the single-process run: the same program, all of the machine
	single := filepath.Join(root, "single")
	cmd := exec.CommandContext(t.Context(), exe, append(append([]string{"run"}, gridArgs...), "-out", single, "-sheet=false")...)
	cmd.Env = append(cleanEnv(), asMainEnv+"=1")
	t0 := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("single-process run: %v\n%s", err, tail(string(out), 4000))
	}
	singleWall := time.Since(t0)

	// the array: tasks 1, 3 and 5 are shards 0, 1 and 2 of 3
	quote := func(args []string) string {
		q := make([]string, len(args))
		for i, a := range args {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		return strings.Join(q, " ")
	}
	job := filepath.Join(root, "grid.sbatch")
	script := fmt.Sprintf(`#!/bin/sh
#SBATCH --job-name=sdpipe-grid
#SBATCH --array=1-5:2
#SBATCH --cpus-per-task=1
#SBATCH --output=%[1]s/slurm-%%A_%%a.out
set -e
export %[2]s=1
exec %[3]s run %[4]s -out %[1]s/shards/task-"$SLURM_ARRAY_TASK_ID"
`, root, asMainEnv, quote([]string{exe}), quote(gridArgs))
	if err := os.WriteFile(job, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	array := cl.sbatch(t, "--chdir="+root, job)
	merged := filepath.Join(root, "merged")
	mergeJob := cl.sbatch(t, "--chdir="+root, "--dependency=afterok:"+array, "--job-name=sdpipe-grid-merge",
		"--output="+filepath.Join(root, "merge.out"),
		"--wrap="+fmt.Sprintf("%s=1 exec %s merge -out %s %s/shards/task-*", asMainEnv, quote([]string{exe}), quote([]string{merged}), quote([]string{root})))
	limit := 5 * time.Minute
	if name != "testConfig" {
		limit = 60 * time.Minute
	}
	states := cl.wait(t, limit, array, mergeJob)
	slurmWall := time.Since(t1)
	logs := func() string {
		var sb strings.Builder
		names, _ := filepath.Glob(filepath.Join(root, "*.out"))
		for _, n := range names {
			b, _ := os.ReadFile(n)
			fmt.Fprintf(&sb, "== %s\n%s\n", filepath.Base(n), tail(string(b), 2000))
		}
		return sb.String()
	}
	want := map[string]string{array + "_1": "COMPLETED", array + "_3": "COMPLETED", array + "_5": "COMPLETED", mergeJob: "COMPLETED"}
	if d := cmp.Diff(want, states); d != "" {
		t.Fatalf("job states (-want +got):\n%s\n%s", d, logs())
	}

	// each task ran the shard that its array index names
	for k, task := range []int{1, 3, 5} {
		out, err := os.ReadFile(filepath.Join(root, fmt.Sprintf("slurm-%s_%d.out", array, task)))
		if err != nil {
			t.Fatal(err)
		}
		if w := fmt.Sprintf("in shard \"%d/3\"", k); !strings.Contains(string(out), w) {
			t.Errorf("task %d printed %q, want %q", task, out, w)
		}
	}

	// the shards' union equals the single-process run, record by record
	ref, err := readManifest(filepath.Join(single, "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ref) != len(items) {
		t.Fatalf("the single-process run wrote %d records, want %d", len(ref), len(items))
	}
	comparable := func(r Record) Record {
		r.Timings, r.Created, r.Shard = Timings{}, "", ""
		return r
	}
	union := map[string]Record{}
	for k, task := range []int{1, 3, 5} {
		dir := filepath.Join(root, "shards", "task-"+strconv.Itoa(task))
		recs, err := readManifest(filepath.Join(dir, fmt.Sprintf("manifest-%d-of-3.jsonl", k)))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Shard != fmt.Sprintf("%d/3", k) || r.Index%3 != k {
				t.Errorf("item %d is in shard %q, made by task %d (shard %d/3)", r.Index, r.Shard, task, k)
			}
			if _, dup := union[r.Key]; dup {
				t.Errorf("item %d made twice", r.Index)
			}
			if err := verify(dir, r); err != nil {
				t.Error(err)
			}
			union[r.Key] = r
		}
	}
	for _, r := range ref {
		got, ok := union[r.Key]
		if !ok {
			t.Errorf("item %d (%s) is in no shard", r.Index, r.Prompt)
			continue
		}
		if d := cmp.Diff(comparable(r), comparable(got)); d != "" {
			t.Errorf("item %d: shard record differs from the single-process run (-single +shard):\n%s", r.Index, d)
		}
	}
	if len(union) != len(ref) {
		t.Errorf("the shards hold %d items, the single-process run %d", len(union), len(ref))
	}

	// the merged folder holds the grid, in order, and verifies
	mrecs, err := readManifest(filepath.Join(merged, "manifest.jsonl"))
	if err != nil {
		t.Fatalf("%v\n%s", err, logs())
	}
	if len(mrecs) != len(ref) {
		t.Errorf("merged %d records, want %d", len(mrecs), len(ref))
	}
	for i, r := range mrecs {
		if r.Index != i || r.SHA256 != ref[slices.IndexFunc(ref, func(x Record) bool { return x.Key == r.Key })].SHA256 {
			t.Errorf("merged line %d: index %d, sha256 %s", i, r.Index, r.SHA256)
		}
		if err := verify(merged, r); err != nil {
			t.Error(err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "merge.out")); !strings.Contains(string(b), fmt.Sprintf("merged %d records", len(ref))) {
		t.Errorf("merge job printed %q", b)
	}

	// and answers searches as the single-process folder does
	style, subject := c.Styles[len(c.Styles)-1], c.Subjects[0]
	for _, q := range [][]string{{"-style", style}, {"-prompt", subject}, {"-seed", strconv.FormatInt(items[len(items)-1].Seed, 10)}} {
		search := func(dir string) []Record {
			var out, errb bytes.Buffer
			if err := run(t.Context(), append([]string{"search", "-dir", dir, "-json"}, q...), &out, &errb); err != nil {
				t.Fatalf("search %q: %v\n%s", q, err, errb.String())
			}
			var recs []Record
			dec := json.NewDecoder(&out)
			for dec.More() {
				var r Record
				if err := dec.Decode(&r); err != nil {
					t.Fatal(err)
				}
				recs = append(recs, comparable(r))
			}
			return recs
		}
		got, want := search(merged), search(single)
		if len(want) == 0 {
			t.Errorf("search %q found nothing in the single-process run", q)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("search %q (-single +merged):\n%s", q, d)
		}
	}
	t.Logf("grid %s: %d items; single process %.1fs; Slurm array of 3 one-CPU tasks on %d CPUs plus the merge job %.1fs (%.2f× the single process)",
		name, len(items), singleWall.Seconds(), runtime.NumCPU(), slurmWall.Seconds(), slurmWall.Seconds()/singleWall.Seconds())
}
