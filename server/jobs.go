package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
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
}

type jobProgress struct {
	Step     int     `json:"step"`
	Total    int     `json:"total"`
	Fraction float64 `json:"fraction"`
}

func (s *Server) status(t *task) jobStatus {
	step, total, state := t.progress()
	st := jobStatus{
		ID: t.id, Status: state, Mode: t.mode, Created: t.created, Replica: s.cfg.ReplicaID,
		Progress:  jobProgress{Step: step, Total: total},
		StatusURL: "/v1/jobs/" + t.id, ResultURL: "/v1/jobs/" + t.id + "/result",
	}
	if total > 0 {
		st.Progress.Fraction = float64(step) / float64(total)
	}
	if state == stateQueued {
		st.QueuePosition = s.queuePosition(t)
	}
	t.mu.Lock()
	if !t.started.IsZero() {
		v := t.started
		st.Started = &v
	}
	if !t.finished.IsZero() {
		v := t.finished
		st.Finished = &v
	}
	if t.err != nil {
		st.Error = asAPIError(t.err).Msg
	}
	st.CancelRequested = t.cancelRequested && t.finished.IsZero()
	t.mu.Unlock()
	return st
}

func (s *Server) handleJobSubmit(w http.ResponseWriter, r *http.Request) {
	var in a1111Request
	if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		writeError(w, err)
		return
	}
	sp, err := s.a1111Spec(&in, len(in.InitImages) > 0)
	if err != nil {
		writeError(w, err)
		return
	}
	// the job outlives the request that submitted it
	t, ctx, err := s.admit(context.WithoutCancel(r.Context()), apiJobs, sp)
	if err != nil {
		writeError(w, err)
		return
	}
	s.mu.Lock()
	s.expireJobs(time.Now())
	s.jobs[t.id] = t
	s.mu.Unlock()
	go s.execute(ctx, t)
	w.Header().Set("Location", "/v1/jobs/"+t.id)
	writeJSON(w, http.StatusAccepted, s.status(t))
}

// expireJobs forgets finished jobs past their TTL, and the oldest finished
// ones beyond MaxJobs. s.mu must be held.
func (s *Server) expireJobs(now time.Time) {
	var finished []*task
	for id, t := range s.jobs {
		t.mu.Lock()
		end := t.finished
		t.mu.Unlock()
		if end.IsZero() {
			continue
		}
		if now.Sub(end) > s.cfg.JobTTL {
			delete(s.jobs, id)
			continue
		}
		finished = append(finished, t)
	}
	if extra := len(finished) - s.cfg.MaxJobs + 1; extra > 0 {
		slices.SortFunc(finished, func(a, b *task) int { return a.created.Compare(b.created) })
		for _, t := range finished[:extra] {
			delete(s.jobs, t.id)
		}
	}
}

func (s *Server) job(w http.ResponseWriter, r *http.Request) *task {
	id := r.PathValue("id")
	s.mu.Lock()
	t := s.jobs[id]
	s.mu.Unlock()
	if t == nil {
		writeError(w, notFound(id))
	}
	return t
}

func (s *Server) handleJobStatus(w http.ResponseWriter, r *http.Request) {
	if t := s.job(w, r); t != nil {
		writeJSON(w, http.StatusOK, s.status(t))
	}
}

func (s *Server) handleJobResult(w http.ResponseWriter, r *http.Request) {
	t := s.job(w, r)
	if t == nil {
		return
	}
	select {
	case <-t.done:
	default:
		writeJSON(w, http.StatusAccepted, s.status(t)) // not ready: poll again
		return
	}
	if t.err != nil {
		writeError(w, t.err)
		return
	}
	out, err := s.a1111Result(t)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// handleJobCancel cancels a job and waits a little for it to stop.
func (s *Server) handleJobCancel(w http.ResponseWriter, r *http.Request) {
	t := s.job(w, r)
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

var errNotFound = errors.New("server: no such job")

func notFound(id string) error {
	return &apiError{Status: http.StatusNotFound, Type: "not_found", Param: "id", Msg: fmt.Sprintf("%v %q (finished jobs expire)", errNotFound, id)}
}
