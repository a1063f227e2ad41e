package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"
)

// JobQueue is a queue of async jobs shared by replicas (package
// server/natsqueue has one on NATS JetStream). With Config.Queue set, a
// replica that accepts POST /v1/jobs only checks the request and enqueues
// it; every replica pulls jobs from the queue while it has capacity
// (Config.QueueConcurrency jobs at a time), so adding a replica adds
// throughput with no coordinator. A job is acknowledged only once its
// record with the result is stored: the job of a replica that dies is
// delivered again to another. Jobs are taken first come, first served
// over all replicas. Config.Jobs must then be a store the replicas share.
// Implementations must be safe for concurrent use.
type JobQueue interface {
	// Enqueue adds a job at the end of the queue.
	Enqueue(ctx context.Context, job QueuedJob) error
	// Next blocks until the queue delivers a job to this replica, or ctx
	// ends.
	Next(ctx context.Context) (Delivery, error)
	// Position returns the 1-based place of job id among the jobs not
	// yet taken by any replica, or 0 when it is not waiting.
	Position(ctx context.Context, id string) (int, error)
	// Stats describes the queue as a whole, for the metrics.
	Stats(ctx context.Context) (QueueStats, error)
	// Cancel asks the replica running job id, whichever it is, to cancel
	// it; Cancels delivers such requests to this replica.
	Cancel(ctx context.Context, id string) error
	Cancels() <-chan string
}

// QueuedJob is a job in a JobQueue: the async request as submitted.
type QueuedJob struct {
	ID      string          `json:"id"`
	Owner   string          `json:"owner"`
	Request json.RawMessage `json:"request"` // the body of POST /v1/jobs, checked
	Created time.Time       `json:"created"`
}

// Delivery is a job delivered to one replica. Until Ack, the queue
// delivers it again, to some replica, if InProgress is not called often
// enough (the replica died or hangs).
type Delivery interface {
	Job() QueuedJob
	// Attempt is 1 for the first delivery.
	Attempt() int
	// InProgress tells the queue the job is still being worked on.
	InProgress() error
	// Ack removes the job from the queue; Retry puts it back, for another
	// replica, after delay.
	Ack() error
	Retry(delay time.Duration) error
}

// QueueStats describe a JobQueue: the autoscaling signal.
type QueueStats struct {
	Waiting  int       // jobs no replica has taken
	Running  int       // jobs taken and not yet acknowledged
	Oldest   time.Time // when the oldest waiting job was enqueued; zero when none
	Replicas int       // replicas pulling, where the queue knows (else 0)
}

// DefaultQueueConcurrency is how many queued jobs a replica runs at once by
// default: enough to keep the engine's stages busy, few enough that a
// replica does not take work that an idle one could start at once.
const DefaultQueueConcurrency = 2

// enqueueJob is POST /v1/jobs with a queue: the checked request goes to the
// queue, and its record to the shared store.
func (s *Server) enqueueJob(w http.ResponseWriter, r *http.Request, in *a1111Request, sp *spec) {
	if s.draining.Load() {
		s.writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "server is shutting down", RetryAfter: 1})
		return
	}
	body, err := json.Marshal(in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	id := sp.id
	if id == "" {
		id = newID()
	}
	total := 0
	for _, q := range sp.reqs {
		total += q.Steps
	}
	rec := JobRecord{ID: id, Owner: identity(r), Status: stateQueued, Mode: sp.mode, Created: time.Now().UTC(), Total: total}
	if err := s.jobs.Put(r.Context(), rec); err != nil {
		s.writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "job store unavailable", RetryAfter: 1, cause: err})
		return
	}
	if err := s.cfg.Queue.Enqueue(r.Context(), QueuedJob{ID: id, Owner: rec.Owner, Request: body, Created: rec.Created}); err != nil {
		s.writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "job queue unavailable", RetryAfter: 1, cause: err})
		return
	}
	st := recordStatus(&rec)
	s.sharedPosition(r.Context(), &st)
	w.Header().Set("Location", "/v1/jobs/"+id)
	writeJSON(w, http.StatusAccepted, st)
}

// sharedPosition fills a queued job's place in the shared queue.
func (s *Server) sharedPosition(ctx context.Context, st *jobStatus) {
	if s.cfg.Queue == nil || st.Status != stateQueued {
		return
	}
	if n, err := s.cfg.Queue.Position(ctx, st.ID); err == nil {
		st.QueuePosition = n
	}
}

// cancelQueued cancels a job of the shared queue that is not running here:
// a waiting one is marked canceled (the replica that takes it drops it), a
// running one is asked to stop on its replica.
func (s *Server) cancelQueued(ctx context.Context, rec *JobRecord) error {
	if !rec.Finished.IsZero() {
		return nil
	}
	if rec.Status == stateQueued {
		now := time.Now().UTC()
		rec.Status, rec.Finished = stateCanceled, now
		e := asAPIError(errCanceled)
		rec.Error = &JobError{Status: e.Status, Type: e.Type, Message: e.Msg}
		if err := s.jobs.Put(ctx, *rec); err != nil {
			return err
		}
	}
	return s.cfg.Queue.Cancel(ctx, rec.ID)
}

// startQueue starts the replica's pullers and its cancel listener; the
// returned function stops them taking jobs (jobs running go on) and waits.
func (s *Server) startQueue(ctx context.Context) (stop func()) {
	q := s.cfg.Queue
	if q == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range s.cfg.QueueConcurrency {
		wg.Go(func() {
			for ctx.Err() == nil && !s.draining.Load() {
				d, err := q.Next(ctx)
				if err != nil {
					if ctx.Err() == nil {
						s.log.Warn("server: job queue", "err", err)
						sleep(ctx, time.Second)
					}
					continue
				}
				s.runDelivery(ctx, d)
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case id := <-q.Cancels():
				s.mu.Lock()
				t := s.live[id]
				s.mu.Unlock()
				if t != nil {
					t.mu.Lock()
					t.cancelRequested = true
					t.mu.Unlock()
					t.cancel(errCanceled)
				}
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// runDelivery runs one job from the queue to its end, storing its records
// as it goes, and acknowledges it once the final record is stored. A job
// that shutdown interrupts goes back to the queue for another replica.
func (s *Server) runDelivery(pullCtx context.Context, d Delivery) {
	job := d.Job()
	log := s.log.With("job", job.ID, "attempt", d.Attempt())
	ctx := context.WithoutCancel(pullCtx)
	rec, err := s.jobs.Get(ctx, job.ID)
	if err == nil && !rec.Finished.IsZero() {
		_ = d.Ack() // canceled while waiting, or finished by a replica that died before its ack
		return
	}
	fail := func(err error) {
		e := asAPIError(err)
		now := time.Now().UTC()
		rec := JobRecord{ID: job.ID, Owner: job.Owner, Status: stateFailed, Replica: s.cfg.ReplicaID, Created: job.Created, Finished: now,
			Error: &JobError{Status: e.Status, Type: e.Type, Message: e.Msg}}
		if err := s.jobs.Put(ctx, rec); err != nil {
			log.Error("server: job store", "err", err)
			_ = d.Retry(time.Second)
			return
		}
		_ = d.Ack()
	}
	var in a1111Request
	if err := json.Unmarshal(job.Request, &in); err != nil {
		fail(badRequest("", "queued request: %v", err))
		return
	}
	sp, err := s.a1111Spec(nil, &in, len(in.InitImages) > 0) // checked when it was submitted
	if err != nil {
		fail(err)
		return
	}
	sp.id = job.ID
	t, tctx, err := s.admit(ctx, job.Owner, apiJobs, sp)
	if err != nil { // full of synchronous work, or shutting down: another replica may take it
		_ = d.Retry(time.Second)
		return
	}
	t.created = job.Created
	s.mu.Lock()
	s.live[t.id] = t
	s.mu.Unlock()
	if err := s.jobs.Put(ctx, s.record(t, nil, 0)); err != nil {
		log.Error("server: job store", "err", err)
	}
	// progress: stored and the lease extended while it runs
	stopBeat := make(chan struct{})
	var beat sync.WaitGroup
	beat.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		last := -1
		n := 0
		for {
			select {
			case <-stopBeat:
				return
			case <-tick.C:
			}
			if n++; n%4 == 0 {
				if err := d.InProgress(); err != nil {
					log.Warn("server: job queue heartbeat", "err", err)
				}
			}
			step, _, state := t.progress()
			if step != last && state == stateRunning {
				last = step
				if err := s.jobs.Put(ctx, s.record(t, nil, 0)); err != nil {
					log.Warn("server: job store", "err", err)
				}
			}
		}
	})
	s.execute(tctx, t)
	close(stopBeat)
	beat.Wait()
	if errors.Is(t.err, errShutdown) {
		// not the job's fault: back to the queue, for another replica
		rec := JobRecord{ID: job.ID, Owner: job.Owner, Status: stateQueued, Mode: t.mode, Created: job.Created}
		_ = s.jobs.Put(ctx, rec)
		_ = d.Retry(0)
		s.mu.Lock()
		delete(s.live, t.id)
		s.mu.Unlock()
		close(t.stored)
		return
	}
	stored := s.jobs.Put(ctx, s.endRecord(t))
	s.mu.Lock()
	delete(s.live, t.id)
	s.mu.Unlock()
	close(t.stored)
	if stored != nil {
		log.Error("server: job store: the job goes back to the queue", "err", stored)
		_ = d.Retry(time.Second)
		return
	}
	if err := d.Ack(); err != nil {
		log.Warn("server: job queue ack", "err", err)
	}
}

// writeQueueMetrics exports the shared queue: the autoscaling signal.
func (s *Server) writeQueueMetrics(ctx context.Context, gauge func(name, help string, v float64)) {
	if s.cfg.Queue == nil {
		return
	}
	st, err := s.cfg.Queue.Stats(ctx)
	if err != nil {
		s.log.Warn("server: job queue stats", "err", err)
		return
	}
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(0, time.Since(st.Oldest).Seconds())
	}
	gauge("sdpipe_job_queue_waiting", "Async jobs in the shared queue that no replica has taken (the autoscaling signal).", float64(st.Waiting))
	gauge("sdpipe_job_queue_running", "Async jobs of the shared queue taken by a replica and not yet done.", float64(st.Running))
	gauge("sdpipe_job_queue_oldest_age_seconds", "Age of the oldest job in the shared queue that no replica has taken; 0 when none.", age)
	if st.Replicas > 0 {
		gauge("sdpipe_job_queue_replicas", "Replicas pulling from the shared queue.", float64(st.Replicas))
	}
}
