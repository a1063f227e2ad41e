package server

import (
	"net/http"
	"testing"
	"time"
)

// TestInterruptScoped is #16 defect 8: /sdapi/v1/interrupt canceled every
// A1111 task on the server. It now interrupts only the caller's own work:
// another identity's interrupt, or one naming another's task, leaves it
// running.
func TestInterruptScoped(t *testing.T) {
	_, ts := newServer(t, Config{Tokens: []string{"alice-token", "bob-token"}})
	alice := []string{"Authorization", "Bearer alice-token"}
	bob := []string{"Authorization", "Bearer bob-token"}
	done := make(chan response, 1)
	go func() {
		done <- post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"alice","steps":900,"seed":1,"force_task_id":"task(alice1)"}`, alice...)
	}()
	progress := func(hdr []string) (step, total int, job string) {
		var p struct {
			State struct {
				Job           string `json:"job"`
				SamplingStep  int    `json:"sampling_step"`
				SamplingSteps int    `json:"sampling_steps"`
			}
		}
		get(t, ts.URL+"/sdapi/v1/progress", hdr...).json(t, &p)
		return p.State.SamplingStep, p.State.SamplingSteps, p.State.Job
	}
	waitFor(t, "alice's request to run", func() bool { step, _, _ := progress(alice); return step > 0 })
	if _, total, _ := progress(bob); total != 0 {
		t.Errorf("bob's progress shows alice's task")
	}
	_, _, job := progress(alice)
	if job != "task(alice1)" {
		t.Errorf("alice's progress names task %q, want her force_task_id", job)
	}
	for _, probe := range []struct{ path, body string }{
		{"/sdapi/v1/interrupt", ""},
		{"/sdapi/v1/interrupt?id_task=task(alice1)", ""},
		{"/sdapi/v1/interrupt", `{"id_task":"task(alice1)"}`},
	} {
		r := post(t, ts.URL+probe.path, probe.body, bob...)
		var out struct{ Interrupted int }
		r.json(t, &out)
		if r.code != http.StatusOK || out.Interrupted != 0 {
			t.Errorf("bob's interrupt %s %s: %d %s, want 200 and nothing interrupted", probe.path, probe.body, r.code, r.body)
		}
	}
	before, _, _ := progress(alice)
	waitFor(t, "alice's request to go on", func() bool { step, _, _ := progress(alice); return step > before })
	select {
	case r := <-done:
		t.Fatalf("alice's request ended after bob's interrupts: %d %s", r.code, r.body)
	case <-time.After(50 * time.Millisecond):
	}
	r := post(t, ts.URL+"/sdapi/v1/interrupt?id_task=task(alice1)", "", alice...)
	var out struct{ Interrupted int }
	r.json(t, &out)
	if out.Interrupted != 1 {
		t.Errorf("alice's interrupt of her task: %s", r.body)
	}
	if r := <-done; r.code != http.StatusOK {
		t.Errorf("alice's interrupted request: %d %s, want 200 with her partial image", r.code, r.body)
	}
}
