package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// TestWaitTurn checks that an admitted task submits only once every task
// admitted before it for the same model has left the queue (submitted or
// ended), whatever the order its goroutine runs in, and that canceling a
// waiting task ends its wait.
func TestWaitTurn(t *testing.T) {
	s, _ := newServer(t, Config{})
	admit := func() (*task, context.Context) {
		t.Helper()
		tk, ctx, err := s.admit(context.Background(), "", apiJobs, &spec{reqs: []sd.Request{{Prompt: "x"}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { // what execute's end does
			s.leaveQueue(tk)
			s.mu.Lock()
			delete(s.active, tk)
			s.mu.Unlock()
			<-s.slots
			tk.cancel(nil)
			s.tasks.Done()
		})
		return tk, ctx
	}
	model := s.models.defaultModel()
	a, _ := admit()
	b, bctx := admit()
	turn := make(chan error, 1)
	go func() { turn <- s.waitTurn(bctx, b, model) }()
	select {
	case err := <-turn:
		t.Fatalf("the second task's turn came while the first waited (%v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := s.waitTurn(context.Background(), a, model); err != nil {
		t.Fatalf("the first task waits: %v", err)
	}
	s.leaveQueue(a) // it submitted
	select {
	case err := <-turn:
		if err != nil {
			t.Fatalf("the second task's turn: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second task's turn never came after the first left the queue")
	}
	s.leaveQueue(b)

	c, _ := admit()
	d, dctx := admit()
	go func() { turn <- s.waitTurn(dctx, d, model) }()
	stop := errors.New("stopped")
	d.cancel(stop)
	select {
	case err := <-turn:
		if !errors.Is(err, stop) {
			t.Errorf("a canceled wait returned %v, want its cause", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("canceling a waiting task did not end its wait")
	}
	_ = c
}
