package natsqueue

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/server"
)

func open(t *testing.T, dir string) *Broker {
	t.Helper()
	b, err := Open(t.Context(), Options{Dir: dir, AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func next(t *testing.T, b *Broker) server.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	d, err := b.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func position(t *testing.T, b *Broker, id string) int {
	t.Helper()
	n, err := b.Position(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestEmbeddedQueue(t *testing.T) {
	dir := t.TempDir()
	b := open(t, dir)
	ctx := t.Context()

	// the store
	rec := server.JobRecord{ID: "job-1", Owner: "token-0", Status: "queued", Created: time.Now().UTC().Truncate(time.Millisecond), Total: 4}
	if err := b.Put(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, "job-1"); err != nil || got.Owner != rec.Owner || !got.Created.Equal(rec.Created) || got.Total != 4 {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	for _, id := range []string{"nope", "a.b", "", "*"} {
		if _, err := b.Get(ctx, id); !errors.Is(err, server.ErrJobNotFound) {
			t.Errorf("Get(%q): %v, want ErrJobNotFound", id, err)
		}
	}

	// the queue: first come, first served
	start := time.Now()
	for _, id := range []string{"job-1", "job-2", "job-3", "job-2"} { // job-2 twice: stored once
		if err := b.Enqueue(ctx, server.QueuedJob{ID: id, Request: []byte(`{"prompt":"x"}`), Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Enqueue(ctx, server.QueuedJob{ID: "bad.id"}); err == nil {
		t.Error("an id with a dot was enqueued")
	}
	for i, id := range []string{"job-1", "job-2", "job-3"} {
		if p := position(t, b, id); p != i+1 {
			t.Errorf("%s at %d, want %d", id, p, i+1)
		}
	}
	st, err := b.Stats(ctx)
	if err != nil || st.Waiting != 3 || st.Running != 0 || st.Oldest.Before(start.Add(-time.Second)) || st.Oldest.After(time.Now()) {
		t.Fatalf("stats %+v, %v; want 3 waiting since the first enqueue", st, err)
	}
	d := next(t, b)
	if d.Job().ID != "job-1" || d.Attempt() != 1 || string(d.Job().Request) != `{"prompt":"x"}` {
		t.Fatalf("first delivery %+v, attempt %d", d.Job(), d.Attempt())
	}
	if p1, p2 := position(t, b, "job-1"), position(t, b, "job-2"); p1 != 0 || p2 != 1 {
		t.Errorf("after one delivery: positions %d and %d, want 0 and 1", p1, p2)
	}
	if st, _ := b.Stats(ctx); st.Waiting != 2 || st.Running != 1 {
		t.Errorf("stats %+v, want 2 waiting and 1 running", st)
	}
	// a job whose holder goes silent past AckWait is delivered again,
	// before the jobs behind it
	t0 := time.Now()
	time.Sleep(1500 * time.Millisecond)
	again := next(t, b)
	if again.Job().ID != "job-1" || again.Attempt() != 2 {
		t.Fatalf("redelivery: %s attempt %d, want job-1 attempt 2", again.Job().ID, again.Attempt())
	}
	t.Logf("redelivered %v after the delivery (AckWait 1s)", time.Since(t0).Round(10*time.Millisecond))
	// one that says it is in progress is not
	d2 := next(t, b)
	if d2.Job().ID != "job-2" {
		t.Fatalf("next delivery %s, want job-2", d2.Job().ID)
	}
	for range 3 {
		time.Sleep(400 * time.Millisecond)
		if err := d2.InProgress(); err != nil {
			t.Fatal(err)
		}
		if err := again.InProgress(); err != nil {
			t.Fatal(err)
		}
	}
	if err := again.Ack(); err != nil {
		t.Fatal(err)
	}
	if err := d2.Retry(0); err != nil { // back to the queue
		t.Fatal(err)
	}
	// it comes again, before or after job-3 (JetStream does not promise
	// which); job-3 goes back too
	got := map[string]int{}
	for range 2 {
		d := next(t, b)
		got[d.Job().ID] = d.Attempt()
		var err error
		if d.Job().ID == "job-2" {
			err = d.Ack()
		} else {
			err = d.Retry(0)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if got["job-2"] != 2 || got["job-3"] != 1 {
		t.Fatalf("after Retry: deliveries %v, want job-2 again and job-3", got)
	}

	// cancels reach every connection
	if err := b.Cancel(ctx, "job-3"); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-b.Cancels():
		if id != "job-3" {
			t.Errorf("cancel of %q", id)
		}
	case <-time.After(5 * time.Second):
		t.Error("no cancel delivered")
	}

	// a restart keeps the waiting job and the records
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = open(t, dir)
	defer b.Close()
	if d := next(t, b); d.Job().ID != "job-3" {
		t.Errorf("after a restart the queue delivers %s, want job-3", d.Job().ID)
	} else if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Stats(ctx); err != nil || st.Waiting != 0 || st.Running != 0 || !st.Oldest.IsZero() {
		t.Errorf("an empty queue: %+v, %v", st, err)
	}
	if _, err := b.Get(ctx, "job-1"); err != nil {
		t.Errorf("record after a restart: %v", err)
	}
}

// TestDirInUse: a second embedded broker on a folder another holds is
// refused, naming the folder and the holder; once the first closes, the
// folder opens again.
func TestDirInUse(t *testing.T) {
	dir := t.TempDir()
	b := open(t, dir)
	_, err := Open(t.Context(), Options{Dir: dir})
	if !errors.Is(err, ErrDirInUse) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Open: %v, want ErrDirInUse naming %s and this process", err, dir)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := open(t, dir)
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
}
