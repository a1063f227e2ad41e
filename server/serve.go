package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Serve serves s on ln until ctx ends, then shuts down gracefully: it
// stops accepting, lets the work in flight finish for up to Config.Grace,
// cancels what is left, and returns. It does not close the Engine.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.log
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("listening", "url", "http://"+ln.Addr().String())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	grace := s.cfg.Grace
	log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg sync.WaitGroup
	var svcErr error
	wg.Go(func() { svcErr = s.Shutdown(sctx) }) // finishes or cancels the work
	httpErr := hs.Shutdown(sctx)                // stops accepting, waits for responses
	if httpErr != nil {
		cancelBase()
		httpErr = errors.Join(httpErr, hs.Close())
	}
	wg.Wait()
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return errors.Join(serveErr, svcErr, httpErr)
}
