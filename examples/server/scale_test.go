package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// These tests run real processes: a nats-server (Debian's), replicas of
// this program (the test binary re-run as the server, see asMainEnv) that
// share its job queue, and nginx in front of them.

// TestSharedQueue runs three replicas on one nats-server behind nginx:
// positions are first come, first served across replicas and readable from
// any replica, a job polled through another replica shows its progress, a
// replica killed mid-job loses nothing (the job completes on another), the
// queue is exported in /metrics, and the results survive a restart of
// every replica.
func TestSharedQueue(t *testing.T) {
	dir := t.TempDir()
	broker := startNATS(t, dir)
	flags := []string{"-broker", broker, "-broker-ack-wait", "3s", "-pull", "1", "-threads", "1", "-batch", "1"}
	var reps []*replica
	for i := range 3 {
		reps = append(reps, startReplica(t, dir, fmt.Sprintf("replica-%d", i), 0, flags...))
	}
	ports := []int{reps[0].port, reps[1].port, reps[2].port}
	front := startNginx(t, dir, ports)

	// busy every replica with a long job, then queue six short ones
	// through the replicas in turn
	var long []job
	for i, r := range reps {
		long = append(long, submit(t, r.url, 150, int64(1000+i), `,"n_iter":6`))
	}
	deadline := time.Now().Add(60 * time.Second)
	for running := 0; running < 3; {
		running = 0
		for _, j := range long {
			if st := status(t, front, j.ID); st.Status == "running" {
				running++
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the three long jobs did not all start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// progress of the long jobs, each read through a replica that does not run it
	for _, j := range long {
		saw := false
		for !saw && time.Now().Before(deadline) {
			runner := status(t, front, j.ID).Replica
			other := reps[0]
			if other.id == runner {
				other = reps[1]
			}
			st := status(t, other.url, j.ID)
			saw = st.Replica == runner && st.Status == "running" && st.Progress.Step > 0 && st.Progress.Total >= 6*150
			time.Sleep(50 * time.Millisecond)
		}
		if !saw {
			t.Errorf("job %s: no progress seen through a replica that does not run it", j.ID)
		}
	}
	var short []job
	for i := range 6 {
		short = append(short, submit(t, reps[i%3].url, 4, int64(i)))
	}
	// positions, read through the replica after the one that took it
	for i, j := range short {
		st := status(t, reps[(i+1)%3].url, j.ID)
		if st.Status != "queued" || st.QueuePosition != i+1 {
			t.Errorf("short job %d from replica %d: status %s, position %d, want queued at %d", i, i%3, st.Status, st.QueuePosition, i+1)
		}
	}
	if w := testenv.Metric(t, reps[2].url, "sdpipe_job_queue_waiting"); w != 6 {
		t.Errorf("sdpipe_job_queue_waiting %v, want 6", w)
	}
	if a := testenv.Metric(t, reps[0].url, "sdpipe_job_queue_oldest_age_seconds"); a <= 0 {
		t.Errorf("sdpipe_job_queue_oldest_age_seconds %v, want > 0", a)
	}
	results := map[string][]byte{}
	var starts []time.Time
	for _, j := range append(long, short...) {
		st := waitJob(t, front, j.ID, 5*time.Minute)
		if st.Status != "done" || st.Started == nil {
			t.Fatalf("job %s: %+v", j.ID, st)
		}
		results[j.ID] = result(t, front, j.ID)
		starts = append(starts, *st.Started)
	}
	// FIFO: each replica stamps Started after it pulled the job, so jobs
	// that replicas pull at the same moment may be stamped a few
	// milliseconds out of order (seen: 5 ms under load); a later job may
	// not start earlier than that.
	const jitter = 200 * time.Millisecond
	for i, a := range starts[3:] {
		for _, b := range starts[3+i+1:] {
			if a.Sub(b) > jitter {
				t.Errorf("the queued jobs started out of order (by more than %v): %v", jitter, starts[3:])
			}
		}
	}

	// kill the replica that runs a job, mid-job
	victim := submit(t, front, 150, 77, `,"n_iter":4`)
	var runner *replica
	deadline = time.Now().Add(60 * time.Second)
	for runner == nil {
		st := status(t, front, victim.ID)
		if st.Status == "running" && st.Progress.Step > 2 {
			for _, r := range reps {
				if r.id == st.Replica {
					runner = r
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the victim job did not start: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	runner.kill()
	killed := time.Now()
	var moved time.Duration
	for {
		st := status(t, front, victim.ID)
		if st.Replica != runner.id && st.Status == "running" && moved == 0 {
			moved = time.Since(killed)
		}
		if st.Finished != nil {
			if st.Status != "done" || st.Replica == runner.id {
				t.Fatalf("the killed replica's job ended %s on %s", st.Status, st.Replica)
			}
			break
		}
		if time.Since(killed) > 2*time.Minute {
			t.Fatalf("the killed replica's job did not complete elsewhere: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	results[victim.ID] = result(t, front, victim.ID)
	t.Logf("killed %s mid-job: the job ran again on another replica %.1fs later (ack wait 3s) and completed %.1fs after the kill", runner.id, moved.Seconds(), time.Since(killed).Seconds())

	// restart every replica (on the same ports, behind the same nginx)
	for _, r := range reps {
		r.stop(t, 15*time.Second)
	}
	for i, r := range reps {
		reps[i] = startReplica(t, dir, r.id, r.port, flags...)
	}
	for id, want := range results {
		if got := result(t, front, id); !bytes.Equal(got, want) {
			t.Errorf("job %s: result differs after the restart", id)
		}
	}
}

// TestEmbeddedQueueSurvivesRestart runs one replica with its default job
// store (the embedded broker in the user's cache folder, here a temporary
// one): an async job's result is there after a restart, an img2img job
// keeps its init image through the queue, and a second server on the same
// folder is refused.
func TestEmbeddedQueueSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Skip("no user cache folder:", err)
	}
	port := testenv.FreePort(t)
	data := filepath.Join(cache, "sdpipe", fmt.Sprintf("server-%d", port))
	if fileExists(data) {
		t.Skipf("%s exists: a server's default job store, left as it is", data)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	r := startReplica(t, dir, "solo", port, "-threads", "1")
	if !fileExists(filepath.Join(data, "sdpipe.lock")) {
		t.Fatalf("no job store in %s (the default): %s", data, r.tail())
	}
	j := submit(t, r.url, 4, 5)
	init := testPNG(t)
	img := fmt.Sprintf(`{"prompt":"a red circle on a blue background","steps":4,"seed":6,"denoising_strength":0.6,"init_images":[%q]}`, init)
	var ij job
	if code := httpJSON(t, "POST", r.url+"/v1/jobs", img, &ij); code != http.StatusAccepted {
		t.Fatalf("img2img job: %d %+v", code, ij)
	}
	for _, id := range []string{j.ID, ij.ID} {
		if st := waitJob(t, r.url, id, 2*time.Minute); st.Status != "done" {
			t.Fatalf("job %+v", st)
		}
	}
	var sync struct{ Images []string }
	if code := httpJSON(t, "POST", r.url+"/sdapi/v1/img2img", img, &sync); code != http.StatusOK || len(sync.Images) != 1 {
		t.Fatalf("sync img2img: %d, %d images", code, len(sync.Images))
	}
	var queued struct{ Images []string }
	if err := json.Unmarshal(result(t, r.url, ij.ID), &queued); err != nil {
		t.Fatal(err)
	}
	if !samePixels(t, queued.Images[0], sync.Images[0]) {
		t.Error("the queued img2img job's image differs from the same request's synchronous image (its init image was lost?)")
	}

	// a second server on the same folder
	exe, _ := os.Executable()
	second := exec.Command(exe, "-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "-data", data, "-warmup=false")
	second.Env = append(os.Environ(), asMainEnv+"=1")
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "folder in use") {
		t.Errorf("a second server on %s: %v\n%s", data, err, out)
	}

	want := result(t, r.url, j.ID)
	r.stop(t, 15*time.Second)
	r = startReplica(t, dir, "solo", r.port, "-threads", "1")
	if got := result(t, r.url, j.ID); !bytes.Equal(got, want) {
		t.Error("the result differs after the restart")
	}
}

// testPNG is a 64×64 gradient as base64 PNG.
func testPNG(t *testing.T) string {
	t.Helper()
	m := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for y := range 64 {
		for x := range 64 {
			m.Set(x, y, color.NRGBA{uint8(x * 4), uint8(y * 4), 128, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

// samePixels says whether two base64 PNGs have the same pixels.
func samePixels(t *testing.T, a, b string) bool {
	t.Helper()
	var px [2]image.Image
	for i, s := range []string{a, b} {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		if px[i], err = png.Decode(bytes.NewReader(raw)); err != nil {
			t.Fatal(err)
		}
	}
	if px[0].Bounds() != px[1].Bounds() {
		return false
	}
	for y := px[0].Bounds().Min.Y; y < px[0].Bounds().Max.Y; y++ {
		for x := px[0].Bounds().Min.X; x < px[0].Bounds().Max.X; x++ {
			if px[0].At(x, y) != px[1].At(x, y) {
				return false
			}
		}
	}
	return true
}

// TestQueueThroughput measures images/min and latency with 1, 2 and 3
// replicas sharing one nats-server behind nginx, on the default model. Set
// SDPIPE_SCALE_BENCH=N (jobs per round) to run it; the replicas share this
// machine's cores.
func TestQueueThroughput(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SDPIPE_SCALE_BENCH"))
	if n <= 0 {
		t.Skip("set SDPIPE_SCALE_BENCH to the jobs per round to measure throughput")
	}
	steps := 25
	dir := t.TempDir()
	broker := startNATS(t, dir)
	for round := range 2 { // two rounds, 1-2-3 then 3-2-1
		for _, k := range []int{1, 2, 3} {
			if round == 1 {
				k = 4 - k
			}
			var reps []*replica
			var ports []int
			for i := range k {
				r := startReplica(t, dir, fmt.Sprintf("bench-%d-%d-%d", round, k, i), 0, "-broker", broker, "-pull", "2")
				reps = append(reps, r)
				ports = append(ports, r.port)
			}
			front := startNginx(t, t.TempDir(), ports)
			t0 := time.Now()
			ids := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { ids[i] = submit(t, front, steps, int64(i)).ID })
			}
			wg.Wait()
			var lat []float64
			for _, id := range ids {
				st := waitJob(t, front, id, 30*time.Minute)
				if st.Status != "done" {
					t.Fatalf("job %s: %+v", id, st)
				}
				lat = append(lat, st.Finished.Sub(st.Created).Seconds())
			}
			wall := time.Since(t0)
			slices.Sort(lat)
			q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
			t.Logf("round %d, %d replica(s): %d jobs of %d steps in %.1fs: %.1f images/min, latency p50 %.2fs p95 %.2fs",
				round+1, k, n, steps, wall.Seconds(), float64(n)/wall.Minutes(), q(0.5), q(0.95))
			for _, r := range reps {
				r.stop(t, 15*time.Second)
			}
		}
	}
}
