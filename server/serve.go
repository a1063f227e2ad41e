package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve serves s on ln until ctx ends, then shuts down gracefully, so that
// every request it accepted ends with a status its client sees:
//
//  1. It drains: new generations get 503 with Retry-After and /healthz
//     says 503, so that a load balancer sends work elsewhere; it goes on
//     answering everything else (job status, results) meanwhile.
//  2. It lets the work in flight finish for up to Config.Grace, then
//     cancels what is left: a synchronous request gets 503 with
//     Retry-After, an async job is marked failed (its result says 503).
//  3. For up to Config.Linger it goes on answering until the clients of
//     the async jobs that ended while draining have fetched how they ended.
//  4. It closes the connections once their responses are written (at
//     most 5 s more), and returns.
//
// It holds at most Config.MaxConns connections open, and times out slow
// headers, bodies and responses (see Config). It does not close the
// Engine.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.log
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	lim := &connLimiter{Listener: ln, max: int64(s.cfg.MaxConns)}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.HeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	s.mu.Lock()
	s.conns = lim
	s.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(lim) }()
	log.Info("listening", "url", "http://"+ln.Addr().String(), "max_conns", s.cfg.MaxConns)
	stopQueue := s.startQueue(base) // pulls shared jobs, with Config.Queue

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	log.Info("shutting down", "grace", s.cfg.Grace)
	gctx, cancel := context.WithTimeout(context.Background(), s.cfg.Grace)
	defer cancel()
	svcErr := s.Shutdown(gctx) // finishes or cancels the work
	stopQueue()
	if errors.Is(svcErr, context.DeadlineExceeded) {
		log.Warn("grace over: canceled the work left", "grace", s.cfg.Grace)
		svcErr = nil // canceling at the end of the grace is the plan, not a failure
	}
	s.linger(s.cfg.Linger)
	hctx, hcancel := context.WithTimeout(context.Background(), httpDrain)
	defer hcancel()
	httpErr := hs.Shutdown(hctx) // stops accepting, waits for the responses
	if httpErr != nil {
		cancelBase()
		httpErr = errors.Join(httpErr, hs.Close())
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return errors.Join(serveErr, svcErr, httpErr)
}

// httpDrain bounds how long Serve waits, once the work is over, for the
// responses being written and for idle connections to close. It must be
// longer than the 5 seconds net/http gives a connection that was opened
// and sent nothing (Go issue 22682: such a connection counts as idle only
// after 5 s), which a client's transport opens when it dials one more
// connection than it ends up using; with 5 s exactly, Serve failed with
// "context deadline exceeded" whenever a client had left one.
const httpDrain = 10 * time.Second

// linger waits up to d until no async job that ended while draining is
// left unread by its client.
func (s *Server) linger(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		s.mu.Lock()
		n := len(s.unread) + len(s.live)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.log.Warn("linger over: async jobs whose end nobody fetched", "jobs", n)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
