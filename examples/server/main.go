// Command server is an HTTP image service: it loads a Stable Diffusion
// model once and serves it to many clients, batching their requests
// dynamically in the engine.
//
//	go run ./examples/server                      # the generated tiny model on 127.0.0.1:7860
//	go run ./examples/server -model models/sd15-onnx -batch 4 -queue 32 -token secret
//
// Endpoints: the AUTOMATIC1111 subset (POST /sdapi/v1/txt2img, img2img,
// GET progress, POST interrupt, GET samplers), a SageMaker-style body
// (POST /invocations, GET /ping), OpenAI's POST /v1/images/generations, an
// async job API (POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/jobs/{id}/result,
// DELETE /v1/jobs/{id}), GET /healthz, GET /metrics (Prometheus) and a web
// page on /.
//
// Every generation is admitted into a bounded queue first (past it, 429
// with Retry-After); the request's context is the Submit context, so a
// client that disconnects cancels its work. Concurrent requests are batched
// by the engine (-batch, -batch-wait); the fast/quality switch snaps steps
// to two values so that requests fall into two groups the engine batches.
//
// With -load it is instead a load generator against a running service on a
// loopback address:
//
//	go run ./examples/server -load -url http://127.0.0.1:7860 -clients 16 -requests 200
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/examples/internal/cli"
	"github.com/sdpipe/sdpipe/sd"
)

func main() {
	ctx, stop := cli.Interruptible() // SIGINT or SIGTERM starts a graceful shutdown
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

// run is the command; ctx ending starts the graceful shutdown.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		addr      = fs.String("addr", "127.0.0.1:7860", "listen address (loopback by default)")
		model     = fs.String("model", "", "model folder (diffusers ONNX layout); empty = the generated tiny model")
		token     = fs.String("token", os.Getenv("SDPIPE_TOKEN"), "bearer token the API requires (default $SDPIPE_TOKEN; empty = none)")
		replica   = fs.String("replica", "", "replica id sent as X-Replica-ID (default host:port)")
		queue     = fs.Int("queue", DefaultMaxQueue, "most generations admitted at once; past it 429")
		maxBody   = fs.Int64("max-body", DefaultMaxBodyBytes, "request body limit in bytes")
		maxSize   = fs.Int("max-size", DefaultMaxSize, "largest width or height")
		maxSteps  = fs.Int("max-steps", DefaultMaxSteps, "most denoising steps per request")
		maxImages = fs.Int("max-images", DefaultMaxImages, "most images per request")
		batch     = fs.Int("batch", 4, "dynamic batching: most images per UNet call (1 = off)")
		batchWait = fs.Duration("batch-wait", 20*time.Millisecond, "dynamic batching: how long to wait for more requests")
		fast      = fs.Int("fast-steps", DefaultFastSteps, "steps of the fast mode")
		quality   = fs.Int("quality-steps", DefaultQualitySteps, "steps of the quality mode")
		mode      = fs.String("mode", "throughput", "engine mode: latency or throughput")
		threads   = fs.Int("threads", 0, "intra-op threads per model (0 = ONNX Runtime's default)")
		grace     = fs.Duration("grace", 30*time.Second, "on SIGTERM, how long in-flight work may finish before it is canceled")
		warmup    = fs.Bool("warmup", true, "warm every model up at start, so the first requests are not slow")
		rewrites  = fs.Bool("rewrites", true, "rewrite the model graphs for speed at load (verified against the originals; the files are not modified)")

		load     = fs.Bool("load", false, "run as a load generator against -url instead of serving")
		loadURL  = fs.String("url", "http://127.0.0.1:7860", "load: the service's base URL (loopback only)")
		clients  = fs.Int("clients", 16, "load: concurrent clients")
		requests = fs.Int("requests", 200, "load: requests in all")
		duration = fs.Duration("duration", time.Minute, "load: stop sending after this long")
		path     = fs.String("path", "/sdapi/v1/txt2img", "load: endpoint")
		backoff  = fs.Duration("backoff", time.Second, "load: how long a client waits at most after a 429 (it honours a shorter Retry-After)")
		body     = fs.String("body", `{"prompt":"a red circle","quality":"fast","seed":-1}`, "load: JSON body")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *load {
		rep, err := RunLoad(ctx, LoadConfig{
			URL: *loadURL, Path: *path, Body: []byte(*body), Clients: *clients,
			Requests: *requests, Duration: *duration, Token: *token, Backoff: *backoff,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, rep)
		if !rep.AllAcceptedCompleted() {
			return errors.New("some accepted requests failed")
		}
		return nil
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	var m sd.Mode
	switch *mode {
	case "latency":
		m = sd.Latency
	case "throughput":
		m = sd.Throughput
	default:
		return fmt.Errorf("-mode: %q is not latency or throughput", *mode)
	}
	dir, opts, err := cli.Model(*model)
	if err != nil {
		return err
	}
	opts = append(opts, sd.WithMode(m), sd.WithBatching(*batch, *batchWait), sd.WithLogger(log))
	if *warmup {
		opts = append(opts, sd.WithWarmup(sd.Warmup{}))
	}
	if !*rewrites {
		opts = append(opts, sd.WithoutRewrites())
	}
	for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder, sd.VAEEncoder} {
		if *threads > 0 {
			opts = append(opts, sd.WithThreads(c, *threads))
		}
	}
	start := time.Now()
	mdl, err := sd.Open(ctx, dir, opts...)
	if err != nil {
		return err
	}
	log.Info("model loaded", "dir", dir, "seconds", time.Since(start).Seconds())

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return errors.Join(err, mdl.Close())
	}
	id := *replica
	if id == "" {
		host, _ := os.Hostname()
		id = host + ":" + portOf(ln.Addr())
	}
	opened := mdl.Folder().Load()
	svc := NewServer(mdl, Config{
		ReplicaID: id, ModelName: filepath.Base(filepath.Clean(dir)), Token: *token,
		MaxQueue: *queue, MaxBodyBytes: *maxBody, MaxSize: *maxSize, MaxSteps: *maxSteps,
		MaxImages: *maxImages, FastSteps: *fast, QualitySteps: *quality, Logger: log, Load: &opened,
	})
	return serve(ctx, ln, svc, mdl, *grace, log)
}

// serve serves until ctx ends, then shuts down gracefully: it stops
// accepting, lets the work in flight finish for up to grace, cancels what
// is left, and shuts the model down.
func serve(ctx context.Context, ln net.Listener, svc *Server, mdl *sd.Model, grace time.Duration, log *slog.Logger) error {
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	hs := &http.Server{
		Handler:           svc.Handler(),
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
	log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg sync.WaitGroup
	var svcErr error
	wg.Go(func() { svcErr = svc.Shutdown(sctx) }) // finishes or cancels the work
	httpErr := hs.Shutdown(sctx)                  // stops accepting, waits for responses
	if httpErr != nil {
		cancelBase()
		httpErr = errors.Join(httpErr, hs.Close())
	}
	wg.Wait()
	mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer mcancel()
	mErr := mdl.Shutdown(mctx)
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	err := errors.Join(serveErr, svcErr, httpErr, mErr)
	log.Info("stopped", "err", err)
	return err
}

func portOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return fmt.Sprint(t.Port)
	}
	return a.String()
}
