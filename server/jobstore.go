package server

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// JobStore keeps the records of async jobs: what a client can ask about a
// job, and the result of a finished one. The Server runs the jobs it
// admits and writes their records as they change (queued, running, and
// once at the end with the result); it reads them to answer
// GET /v1/jobs/{id} and its result. A store shared by replicas, or one
// that persists, lets any replica, or a restarted one, answer.
// Implementations must be safe for concurrent use.
type JobStore interface {
	// Put creates or replaces the record of job rec.ID.
	Put(ctx context.Context, rec JobRecord) error
	// Get returns the record of job id, or an error matching
	// ErrJobNotFound.
	Get(ctx context.Context, id string) (JobRecord, error)
	// Close releases the store; the Server closes the store it made, never
	// one from Config.Jobs.
	Close() error
}

// ErrJobNotFound is matched by the error of JobStore.Get for a job it does
// not hold (never submitted, or expired).
var ErrJobNotFound = errors.New("server: no such job")

// JobRecord is what a JobStore keeps of a job. It is a plain value that
// encodes to JSON.
type JobRecord struct {
	ID      string `json:"id"`
	Owner   string `json:"owner"`  // the identity that submitted it
	Status  string `json:"status"` // queued, running, done, failed, canceled
	Mode    string `json:"mode"`   // fast, quality or custom
	Replica string `json:"replica"`
	// Created, Started and Finished are zero until they happen.
	Created, Started, Finished time.Time
	Step, Total                int       // denoising steps done and in all
	Error                      *JobError `json:"error,omitempty"` // failed or canceled
	// Result is the body of GET /v1/jobs/{id}/result of a done job (JSON
	// in AUTOMATIC1111's shape), with Images images in it.
	Result []byte `json:"result,omitempty"`
	Images int    `json:"images,omitempty"`
}

// JobError is how a failed or canceled job ended, as its result's error
// response says it.
type JobError struct {
	Status     int    `json:"status"`
	Type       string `json:"type"`
	Message    string `json:"message"`
	RetryAfter int    `json:"retry_after,omitempty"`
}

// MemoryJobStore is the default JobStore: records in memory, each finished
// one forgotten ttl after it finished (on a timer, whether or not anything
// else happens), and the oldest finished ones past max. It does not
// survive the process.
type MemoryJobStore struct {
	ttl time.Duration
	max int

	mu     sync.Mutex
	recs   map[string]*memRecord
	closed bool
}

type memRecord struct {
	rec   JobRecord
	timer *time.Timer
}

// NewMemoryJobStore returns an empty MemoryJobStore that keeps finished
// jobs for ttl, max of them at most (0 means DefaultJobTTL and
// DefaultMaxJobs).
func NewMemoryJobStore(ttl time.Duration, max int) *MemoryJobStore {
	return &MemoryJobStore{ttl: cmp.Or(ttl, DefaultJobTTL), max: cmp.Or(max, DefaultMaxJobs), recs: map[string]*memRecord{}}
}

// Put implements JobStore.
func (m *MemoryJobStore) Put(_ context.Context, rec JobRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("server: job store closed")
	}
	r := m.recs[rec.ID]
	if r == nil {
		r = &memRecord{}
		m.recs[rec.ID] = r
	}
	r.rec = rec
	if rec.Finished.IsZero() || r.timer != nil {
		return nil
	}
	id := rec.ID
	r.timer = time.AfterFunc(time.Until(rec.Finished.Add(m.ttl)), func() { m.expire(id, r) })
	m.trim()
	return nil
}

func (m *MemoryJobStore) expire(id string, r *memRecord) {
	m.mu.Lock()
	if m.recs[id] == r {
		delete(m.recs, id)
	}
	m.mu.Unlock()
}

// trim forgets the oldest finished records past max. m.mu is held.
func (m *MemoryJobStore) trim() {
	var finished []*memRecord
	for _, r := range m.recs {
		if !r.rec.Finished.IsZero() {
			finished = append(finished, r)
		}
	}
	extra := len(finished) - m.max
	if extra <= 0 {
		return
	}
	slices.SortFunc(finished, func(a, b *memRecord) int { return a.rec.Finished.Compare(b.rec.Finished) })
	for _, r := range finished[:extra] {
		r.timer.Stop()
		delete(m.recs, r.rec.ID)
	}
}

// Get implements JobStore.
func (m *MemoryJobStore) Get(_ context.Context, id string) (JobRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[id]
	if !ok {
		return JobRecord{}, ErrJobNotFound
	}
	return r.rec, nil
}

// Len returns the number of records held.
func (m *MemoryJobStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

// Close implements JobStore: it stops the timers and forgets every record.
func (m *MemoryJobStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.recs {
		if r.timer != nil {
			r.timer.Stop()
		}
	}
	m.recs, m.closed = map[string]*memRecord{}, true
	return nil
}
