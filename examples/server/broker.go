package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/sdpipe/sdpipe/server"
	"github.com/sdpipe/sdpipe/server/natsqueue"
)

// brokerFlags are the flags of the job queue shared by replicas.
type brokerFlags struct {
	url, data, listen string
	ackWait           time.Duration
	pull              int
}

// open returns the job store and queue the flags ask for: with -broker,
// the NATS system the replicas share; else, with -data, an embedded NATS
// server whose files in that folder keep the async jobs and results
// across restarts (auto: a folder per listen port in the user's cache
// folder); with -data none, nil (the in-memory store of one process).
func (f *brokerFlags) open(ctx context.Context, cfg *server.Config, addr string) (closeFn func() error, err error) {
	if f.data == "auto" {
		f.data = ""
		_, port, _ := net.SplitHostPort(addr)
		if cache, err := os.UserCacheDir(); err == nil && f.url == "" && port != "" && port != "0" {
			f.data = filepath.Join(cache, "sdpipe", "server-"+port)
		}
	}
	if f.data == "none" {
		f.data = ""
	}
	if f.url == "" && f.data == "" {
		if f.listen != "" {
			return nil, errors.New("-broker-listen needs -data (the embedded broker)")
		}
		return func() error { return nil }, nil
	}
	b, err := natsqueue.Open(ctx, natsqueue.Options{URL: f.url, Dir: f.data, Listen: f.listen, AckWait: f.ackWait})
	if err != nil {
		if f.url == "" {
			return nil, fmt.Errorf("-data %s: %w (-data none keeps the jobs in memory)", f.data, err)
		}
		return nil, err
	}
	cfg.Jobs, cfg.Queue, cfg.QueueConcurrency = b, b, f.pull
	return b.Close, nil
}
