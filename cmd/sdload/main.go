// Command sdload is a load generator for the image service (package
// server, examples/server): a bounded number of concurrent clients send
// requests until a count or a duration is reached, and it reports
// throughput, latency percentiles, 429s and whether every accepted request
// completed. It only sends to loopback addresses.
//
//	go run ./examples/server &
//	go run ./cmd/sdload -url http://127.0.0.1:7860 -clients 16 -requests 200
//
// It exits with status 1 when an accepted request (one not refused with
// 429) failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sdload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sdload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		url      = fs.String("url", "http://127.0.0.1:7860", "the service's base URL (loopback only)")
		token    = fs.String("token", os.Getenv("SDPIPE_TOKEN"), "bearer token (default $SDPIPE_TOKEN)")
		clients  = fs.Int("clients", 16, "concurrent clients")
		requests = fs.Int("requests", 200, "requests in all")
		duration = fs.Duration("duration", time.Minute, "stop sending after this long")
		path     = fs.String("path", "/sdapi/v1/txt2img", "endpoint")
		backoff  = fs.Duration("backoff", time.Second, "how long a client waits at most after a 429 (it honours a shorter Retry-After)")
		body     = fs.String("body", `{"prompt":"a red circle","quality":"fast","seed":-1}`, "JSON body")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	rep, err := RunLoad(ctx, LoadConfig{
		URL: *url, Path: *path, Body: []byte(*body), Clients: *clients,
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
