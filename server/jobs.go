package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// jobStatus is the body of GET /v1/jobs/{id}.
type jobStatus struct {
	ID            string      `json:"id"`
	Status        string      `json:"status"` // queued, running, done, failed, canceled
	QueuePosition int         `json:"queue_position"`
	Progress      jobProgress `json:"progress"`
	Mode          string      `json:"mode"`
	// CancelRequested is set once a cancel came, until the job stops: a
	// request waiting between engine stages stops when a stage takes it.
	CancelRequested bool       `json:"cancel_requested,omitempty"`
	Error           string     `json:"error,omitempty"`
	Created         time.Time  `json:"created"`
	Started         *time.Time `json:"started,omitempty"`
	Finished        *time.Time `json:"finished,omitempty"`
	Replica         string     `json:"replica,omitempty"`
	StatusURL       string     `json:"status_url"`
	ResultURL       string     `json:"result_url"`
	// CurrentImage is the live preview of a running job as base64 PNG,
	// when ?preview=true asks for it (the web page shows it).
	CurrentImage *string `json:"current_image,omitempty"`
}

type jobProgress struct {
	Step     int     `json:"step"`
	Total    int     `json:"total"`
	Fraction float64 `json:"fraction"`
}

// status describes a job of this server that has not finished: its
// record's status, with its place in the queue and whether a cancel was
// asked for.
func (s *Server) status(t *task) jobStatus {
	rec := s.record(t, nil, 0)
	st := recordStatus(&rec)
	if rec.Status == stateQueued {
		st.QueuePosition = s.queuePosition(t)
	}
	t.mu.Lock()
	st.CancelRequested = t.cancelRequested && t.finished.IsZero()
	t.mu.Unlock()
	return st
}

// recordStatus describes a job from its record.
func recordStatus(rec *JobRecord) jobStatus {
	st := jobStatus{
		ID: rec.ID, Status: rec.Status, Mode: rec.Mode, Created: rec.Created, Replica: rec.Replica,
		Progress:  jobProgress{Step: rec.Step, Total: rec.Total},
		StatusURL: "/v1/jobs/" + rec.ID, ResultURL: "/v1/jobs/" + rec.ID + "/result",
	}
	if rec.Total > 0 {
		st.Progress.Fraction = float64(rec.Step) / float64(rec.Total)
	}
	if !rec.Started.IsZero() {
		v := rec.Started
		st.Started = &v
	}
	if !rec.Finished.IsZero() {
		v := rec.Finished
		st.Finished = &v
	}
	if rec.Error != nil {
		st.Error = rec.Error.Message
	}
	return st
}

// record is t's record for the store; results is the body of its result,
// when it is done.
func (s *Server) record(t *task, result []byte, images int) JobRecord {
	step, total, state := t.progress()
	t.mu.Lock()
	defer t.mu.Unlock()
	rec := JobRecord{
		ID: t.id, Owner: t.owner, Status: state, Mode: t.mode, Replica: s.cfg.ReplicaID,
		Created: t.created, Started: t.started, Finished: t.finished,
		Step: step, Total: total, Result: result, Images: images,
	}
	if t.err != nil {
		e := asAPIError(t.err)
		rec.Error = &JobError{Status: e.Status, Type: e.Type, Message: e.Msg, RetryAfter: e.RetryAfter}
	}
	return rec
}

// endRecord is the record of a job that has run: its result encoded as
// the A1111 response, whose images the store holds from now on (a result
// that cannot be encoded fails the job).
func (s *Server) endRecord(t *task) JobRecord {
	var body []byte
	var images int
	if t.err == nil {
		out, n, err := s.a1111Result(t)
		if err == nil {
			body, err = json.Marshal(out)
		}
		if err != nil {
			t.mu.Lock()
			t.state, t.err = stateFailed, err
			t.mu.Unlock()
		}
		images = n
		t.results = nil
	}
	return s.record(t, body, images)
}

func (s *Server) handleJobSubmit(w http.ResponseWriter, r *http.Request) {
	var in a1111Request
	release, err := s.decode(w, r, &in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	queued := in // as it came: a1111Spec moves the images out of in
	sp, err := s.a1111Spec(r, &in, len(in.InitImages) > 0)
	release()
	if err != nil {
		s.writeError(w, err)
		return
	}
	eng := s.models.loaded(sp.model) // a model not loaded yet checks the requests when it runs them
	for _, req := range sp.reqs {    // the client hears of a bad request now, not from its job
		if eng == nil {
			break
		}
		if err := eng.Check(req); err != nil {
			s.writeError(w, err)
			return
		}
	}
	if sp.id != "" {
		if _, err := s.jobs.Get(r.Context(), sp.id); err == nil {
			s.writeError(w, badRequest("force_task_id", "force_task_id: a job %q exists", sp.id))
			return
		}
	}
	if s.cfg.Queue != nil { // to the queue the replicas share (queue.go)
		s.enqueueJob(w, r, &queued, sp)
		return
	}
	// the job outlives the request that submitted it
	t, ctx, err := s.admit(context.WithoutCancel(r.Context()), identity(r), apiJobs, sp)
	if err != nil {
		s.writeError(w, err)
		return
	}
	s.mu.Lock()
	s.live[t.id] = t
	s.mu.Unlock()
	if err := s.jobs.Put(r.Context(), s.record(t, nil, 0)); err != nil {
		s.log.Error("server: job store", "job", t.id, "err", err)
	}
	go s.runJob(ctx, t)
	w.Header().Set("Location", "/v1/jobs/"+t.id)
	writeJSON(w, http.StatusAccepted, s.status(t))
}

// runJob runs an async job to its end and stores its record with its
// result. Its panics are caught by execute and by the guard here.
func (s *Server) runJob(ctx context.Context, t *task) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("server: panic storing a job", "job", t.id, "panic", v)
		}
		close(t.stored)
	}()
	s.execute(ctx, t)
	if err := s.jobs.Put(context.WithoutCancel(ctx), s.endRecord(t)); err != nil {
		s.log.Error("server: job store", "job", t.id, "err", err)
	}
	s.mu.Lock()
	delete(s.live, t.id)
	if s.draining.Load() {
		s.unread[t.id] = true
	}
	s.mu.Unlock()
}

// job returns the live task or the record of the request's job, or writes
// a 404.
func (s *Server) job(w http.ResponseWriter, r *http.Request) (*task, *JobRecord) {
	id := r.PathValue("id")
	s.mu.Lock()
	t := s.live[id]
	s.mu.Unlock()
	if t != nil {
		t.mu.Lock()
		ended := !t.finished.IsZero() // its status says how it ended before its record is stored
		t.mu.Unlock()
		if !ended {
			select {
			case <-t.done:
			default:
				return t, nil
			}
		}
		<-t.stored // executed: its record is about to be stored
	}
	rec, err := s.jobs.Get(r.Context(), id)
	if err != nil {
		if errors.Is(err, ErrJobNotFound) {
			s.writeError(w, &apiError{Status: http.StatusNotFound, Type: "not_found", Param: "id", Msg: fmt.Sprintf("no such job %q (finished jobs expire after %v)", id, s.cfg.JobTTL)})
		} else {
			s.writeError(w, err)
		}
		return nil, nil
	}
	if rec.Finished.IsZero() || !s.draining.Load() {
		return nil, &rec
	}
	s.mu.Lock()
	delete(s.unread, id) // its client has seen how it ended
	s.mu.Unlock()
	return nil, &rec
}

func (s *Server) handleJobStatus(w http.ResponseWriter, r *http.Request) {
	t, rec := s.job(w, r)
	switch {
	case t != nil:
		st := s.status(t)
		if r.URL.Query().Get("preview") == "true" {
			st.CurrentImage = t.previewPNG()
		}
		writeJSON(w, http.StatusOK, st)
	case rec != nil:
		st := recordStatus(rec)
		s.sharedPosition(r.Context(), &st)
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *Server) handleJobResult(w http.ResponseWriter, r *http.Request) {
	t, rec := s.job(w, r)
	switch {
	case t != nil:
		writeJSON(w, http.StatusAccepted, s.status(t)) // not ready: poll again
	case rec == nil:
	case rec.Finished.IsZero():
		writeJSON(w, http.StatusAccepted, recordStatus(rec))
	case rec.Error != nil:
		e := rec.Error
		s.writeError(w, &apiError{Status: e.Status, Type: e.Type, Msg: e.Message, RetryAfter: e.RetryAfter})
	default:
		s.met.served(rec.Images)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(rec.Result)
	}
}

// handleJobCancel cancels a job and waits a little for it to stop.
func (s *Server) handleJobCancel(w http.ResponseWriter, r *http.Request) {
	t, rec := s.job(w, r)
	if rec != nil {
		if s.cfg.Queue != nil { // waiting in the shared queue, or running on another replica
			if err := s.cancelQueued(r.Context(), rec); err != nil {
				s.writeError(w, err)
				return
			}
		}
		writeJSON(w, http.StatusOK, recordStatus(rec)) // finished, or on another replica
		return
	}
	if t == nil {
		return
	}
	t.mu.Lock()
	t.cancelRequested = true
	t.mu.Unlock()
	t.cancel(errCanceled)
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	select {
	case <-t.done:
	case <-timer.C:
	case <-r.Context().Done():
	}
	writeJSON(w, http.StatusOK, s.status(t))
}
