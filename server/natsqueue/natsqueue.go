// Package natsqueue is the job queue and job store of package server on
// NATS JetStream, shared by every replica connected to the same NATS
// system. It runs in-process (an embedded nats-server with file storage:
// one replica whose async jobs and results survive a restart), or against
// a nats-server, or a cluster of them, that several replicas share.
//
// The queue is a work-queue stream (sdpipe.jobs.<id>, one message a job)
// with one durable pull consumer that every replica pulls from: the
// stream's order is the order jobs are taken in, over all replicas, and a
// job a replica took but did not acknowledge within AckWait (it died, or
// stopped extending the lease) is delivered again, to any replica. The
// records of jobs (status, progress, result) are a key-value bucket, so
// any replica answers for any job. Cancel requests go over plain NATS to
// every replica (sdpipe.cancel.<id>).
package natsqueue

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sdpipe/sdpipe/server"
)

// Names in the NATS system.
const (
	Stream      = "SDPIPE_JOBS"
	Consumer    = "workers"
	Bucket      = "sdpipe_jobs"
	jobSubject  = "sdpipe.jobs."
	cancelSubj  = "sdpipe.cancel."
	maxPayload  = 64 << 20 // nats-server's largest; results of big batches are megabytes
	defaultWait = 15 * time.Second
)

// Options configure Open.
type Options struct {
	// URL is the NATS system to use ("nats://host:4222", comma-separated
	// for a cluster); empty runs an embedded server.
	URL string
	// Dir is where the embedded server keeps its JetStream files (the
	// jobs and records survive a restart with the same Dir). Required
	// when URL is empty. One process at a time: Open holds a lock on the
	// folder until Close, and a second Open of it fails with ErrDirInUse.
	Dir string
	// Listen, for the embedded server, also serves NATS at this address
	// ("127.0.0.1:4222"), so that other replicas or tools can connect.
	Listen string
	// AckWait is how long a replica may hold a job without extending its
	// lease before the queue gives it to another (default 15 s; a running
	// replica extends it every 2 s). MaxDeliver is how many times a job
	// is delivered before it is dropped (default 5).
	AckWait    time.Duration
	MaxDeliver int
	// RecordTTL is how long a job's record is kept after its last change
	// (default 24 h; finished jobs are what it bounds).
	RecordTTL time.Duration
	// StreamReplicas is the number of copies a NATS cluster keeps of the
	// queue and records (default 1; 3 on a three-node cluster).
	StreamReplicas int
}

// Broker is the NATS connection; it implements server.JobQueue and
// server.JobStore.
type Broker struct {
	srv     *natsserver.Server // embedded, or nil
	lock    *os.File           // the embedded server's Dir, held
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  jetstream.Stream
	cons    jetstream.Consumer
	kv      jetstream.KeyValue
	sub     *nats.Subscription
	cancels chan string
}

var (
	_ server.JobQueue = (*Broker)(nil)
	_ server.JobStore = (*Broker)(nil)
)

// ErrDirInUse is matched by the error of Open for an embedded server whose
// Dir another Broker, in this process or another, holds.
var ErrDirInUse = errors.New("natsqueue: folder in use")

// lockDir takes the lock file of dir, creating dir if needed, and writes
// this process's id into it for the error another process gets.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("natsqueue: %w", err)
	}
	p := filepath.Join(dir, "sdpipe.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("natsqueue: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(p)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if holder == "" {
			holder = "another process"
		} else {
			holder = "process " + holder
		}
		return nil, fmt.Errorf("%w: %s is held by %s (one server per data folder; give this one another folder)", ErrDirInUse, dir, holder)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// Open connects to (or starts) the NATS system and creates the stream,
// the consumer and the bucket if they are missing.
func Open(ctx context.Context, o Options) (*Broker, error) {
	b := &Broker{cancels: make(chan string, 64)}
	o.AckWait = cmp.Or(o.AckWait, defaultWait)
	o.MaxDeliver = cmp.Or(o.MaxDeliver, 5)
	o.RecordTTL = cmp.Or(o.RecordTTL, 24*time.Hour)
	o.StreamReplicas = cmp.Or(o.StreamReplicas, 1)
	url := o.URL
	var copts []nats.Option
	if url == "" {
		if o.Dir == "" {
			return nil, errors.New("natsqueue: an embedded server needs Options.Dir")
		}
		lock, err := lockDir(o.Dir)
		if err != nil {
			return nil, err
		}
		b.lock = lock
		sopts := &natsserver.Options{
			ServerName: "sdpipe-embedded", JetStream: true, StoreDir: o.Dir,
			MaxPayload: maxPayload, NoSigs: true, NoLog: true, DontListen: o.Listen == "",
		}
		if o.Listen != "" {
			host, port, err := splitHostPort(o.Listen)
			if err != nil {
				return nil, err
			}
			sopts.Host, sopts.Port = host, port
		}
		srv, err := natsserver.NewServer(sopts)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("natsqueue: embedded server: %w", err)
		}
		srv.Start()
		if !srv.ReadyForConnections(10 * time.Second) {
			srv.Shutdown()
			b.Close()
			return nil, errors.New("natsqueue: the embedded server did not start")
		}
		b.srv = srv
		copts = append(copts, nats.InProcessServer(srv))
	}
	copts = append(copts, nats.Name("sdpipe"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	nc, err := nats.Connect(url, copts...)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("natsqueue: connect %s: %w", url, err)
	}
	b.nc = nc
	if err := b.setup(ctx, o); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	var port int
	if i < 0 {
		return "", 0, fmt.Errorf("natsqueue: listen address %q: want host:port", addr)
	}
	if _, err := fmt.Sscan(addr[i+1:], &port); err != nil {
		return "", 0, fmt.Errorf("natsqueue: listen address %q: %w", addr, err)
	}
	return addr[:i], port, nil
}

func (b *Broker) setup(ctx context.Context, o Options) error {
	js, err := jetstream.New(b.nc)
	if err != nil {
		return fmt.Errorf("natsqueue: %w", err)
	}
	b.js = js
	b.stream, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: Stream, Subjects: []string{jobSubject + "*"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Replicas: o.StreamReplicas, Duplicates: 10 * time.Minute,
		MaxMsgSize: maxPayload, Discard: jetstream.DiscardNew,
	})
	if err != nil {
		return fmt.Errorf("natsqueue: stream %s: %w", Stream, err)
	}
	b.cons, err = b.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: Consumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: o.AckWait,
		MaxDeliver: o.MaxDeliver, FilterSubject: jobSubject + "*", DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: -1, MaxWaiting: 1024, Replicas: o.StreamReplicas,
	})
	if err != nil {
		return fmt.Errorf("natsqueue: consumer %s: %w", Consumer, err)
	}
	b.kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, History: 1, TTL: o.RecordTTL, Storage: jetstream.FileStorage,
		Replicas: o.StreamReplicas, MaxValueSize: maxPayload,
	})
	if err != nil {
		return fmt.Errorf("natsqueue: bucket %s: %w", Bucket, err)
	}
	b.sub, err = b.nc.Subscribe(cancelSubj+"*", func(m *nats.Msg) {
		select {
		case b.cancels <- strings.TrimPrefix(m.Subject, cancelSubj):
		default: // a burst of cancels for jobs elsewhere: the record says canceled anyway
		}
	})
	if err != nil {
		return fmt.Errorf("natsqueue: %w", err)
	}
	return nil
}

// Close drains the connection and stops the embedded server, if any.
func (b *Broker) Close() error {
	var err error
	if b.nc != nil {
		err = b.nc.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !b.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		b.nc.Close()
	}
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
	if b.lock != nil {
		b.lock.Close() // releases the folder
		b.lock = nil
	}
	return err
}

// ClientURL is the embedded server's address when it listens, else "".
func (b *Broker) ClientURL() string {
	if b.srv == nil || b.srv.Addr() == nil {
		return ""
	}
	return b.srv.ClientURL()
}

// ---- server.JobStore

// Put implements server.JobStore.
func (b *Broker) Put(ctx context.Context, rec server.JobRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = b.kv.Put(ctx, rec.ID, v)
	return err
}

// Get implements server.JobStore.
func (b *Broker) Get(ctx context.Context, id string) (server.JobRecord, error) {
	var rec server.JobRecord
	if !validID(id) {
		return rec, server.ErrJobNotFound
	}
	e, err := b.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, server.ErrJobNotFound
	}
	if err != nil {
		return rec, err
	}
	err = json.Unmarshal(e.Value(), &rec)
	return rec, err
}

// validID reports whether id can be a key and a subject token.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// ---- server.JobQueue

// Enqueue implements server.JobQueue. The job id is the message id, so a
// retried enqueue of the same job is stored once.
func (b *Broker) Enqueue(ctx context.Context, job server.QueuedJob) error {
	if !validID(job.ID) {
		return fmt.Errorf("natsqueue: job id %q: want letters, digits, - and _", job.ID)
	}
	v, err := json.Marshal(job)
	if err != nil {
		return err
	}
	_, err = b.js.Publish(ctx, jobSubject+job.ID, v, jetstream.WithMsgID(job.ID))
	return err
}

type delivery struct {
	msg     jetstream.Msg
	job     server.QueuedJob
	attempt int
}

func (d *delivery) Job() server.QueuedJob { return d.job }
func (d *delivery) Attempt() int          { return d.attempt }
func (d *delivery) InProgress() error     { return d.msg.InProgress() }
func (d *delivery) Ack() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.msg.DoubleAck(ctx) // confirmed: a lost ack would run the job twice
}
func (d *delivery) Retry(delay time.Duration) error {
	if delay <= 0 {
		return d.msg.Nak()
	}
	return d.msg.NakWithDelay(delay)
}

// Next implements server.JobQueue.
func (b *Broker) Next(ctx context.Context) (server.Delivery, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		msg, err := b.cons.Next(jetstream.FetchMaxWait(time.Second))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var job server.QueuedJob
		if err := json.Unmarshal(msg.Data(), &job); err != nil || !validID(job.ID) {
			_ = msg.Term() // not a job of ours: never deliver it again
			continue
		}
		d := &delivery{msg: msg, job: job, attempt: 1}
		if md, err := msg.Metadata(); err == nil {
			d.attempt = int(md.NumDelivered)
		}
		return d, nil
	}
}

// Position implements server.JobQueue: the jobs between the last one
// delivered and this one.
func (b *Broker) Position(ctx context.Context, id string) (int, error) {
	if !validID(id) {
		return 0, nil
	}
	m, err := b.stream.GetLastMsgForSubject(ctx, jobSubject+id)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil // acknowledged: done
	}
	if err != nil {
		return 0, err
	}
	info, err := b.cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	if m.Sequence <= info.Delivered.Stream {
		return 0, nil // taken by a replica
	}
	return int(m.Sequence - info.Delivered.Stream), nil
}

// Stats implements server.JobQueue.
func (b *Broker) Stats(ctx context.Context) (server.QueueStats, error) {
	info, err := b.cons.Info(ctx)
	if err != nil {
		return server.QueueStats{}, err
	}
	st := server.QueueStats{Waiting: int(info.NumPending), Running: info.NumAckPending}
	if info.NumPending > 0 {
		m, err := b.stream.GetMsg(ctx, info.Delivered.Stream+1, jetstream.WithGetMsgSubject(jobSubject+"*"))
		if err == nil {
			st.Oldest = m.Time
		}
	}
	return st, nil
}

// Cancel implements server.JobQueue.
func (b *Broker) Cancel(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	if err := b.nc.Publish(cancelSubj+id, nil); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second) // Flush needs a deadline
	defer cancel()
	return b.nc.FlushWithContext(ctx)
}

// Cancels implements server.JobQueue.
func (b *Broker) Cancels() <-chan string { return b.cancels }
