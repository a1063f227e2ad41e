// Command server is an HTTP image service: it loads a Stable Diffusion
// model once and serves it to many clients with package server, batching
// their requests dynamically in the engine.
//
//	go run ./examples/server                      # the default model on 127.0.0.1:7860
//	go run ./examples/server -model models/sd15-onnx -batch 4 -queue 32 -token secret
//	go run ./examples/server -models-dir ~/models -models-memory 12GiB  # several checkpoints, loaded on demand
//
// See package server for the endpoints, and cmd/sdload for a load
// generator.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/examples/internal/cli"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/server"
)

func main() {
	ctx, stop := cli.Interruptible() // SIGINT or SIGTERM starts a graceful shutdown
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

// run is the command; ctx ending starts the graceful shutdown.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	sageMaker, args := sageMakerArgs(args) // "serve": SageMaker's container contract
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		addr      = fs.String("addr", "127.0.0.1:7860", "listen address (loopback by default)")
		model     = fs.String("model", "", "model folder (diffusers ONNX layout) or single-file checkpoint; empty = the default model (or, with -models-dir, none)")
		modelsDir = fs.String("models-dir", "", "folder of models (ONNX folders and .safetensors checkpoints) loaded on demand, listed at /sdapi/v1/sd-models and chosen per request (override_settings.sd_model_checkpoint, OpenAI's model); -model, when given, is one more, the default")
		modelsMem = fs.String("models-memory", "", "with -models-dir: the most bytes of model files loaded at once, e.g. 12GiB; past it the least recently used idle models are closed (default: no limit)")
		defModel  = fs.String("default-model", "", "with -models-dir and no -model: the default model's name (default: the first by name)")
		token     = fs.String("token", os.Getenv("SDPIPE_TOKEN"), "bearer token the API requires (default $SDPIPE_TOKEN; empty = none)")
		replica   = fs.String("replica", "", "replica id sent as X-Replica-ID (default host:port)")
		queue     = fs.Int("queue", server.DefaultMaxQueue, "most generations admitted at once; past it 429")
		maxBody   = fs.Int64("max-body", server.DefaultMaxBodyBytes, "request body limit in bytes (past it 413)")
		bodyMem   = fs.Int64("max-body-memory", 0, "most bytes of request bodies read at once, over all requests (past it 429; default 4 × -max-body)")
		maxConns  = fs.Int("max-conns", server.DefaultMaxConns, "most open connections (past it a new one gets 503)")
		bodyTime  = fs.Duration("body-timeout", server.DefaultBodyTimeout, "a request body must arrive within this (else 408)")
		bodyIdle  = fs.Duration("body-idle-timeout", server.DefaultBodyIdleTimeout, "a request body may pause at most this long (else 408)")
		idle      = fs.Duration("idle-timeout", server.DefaultIdleTimeout, "an idle keep-alive connection is closed after this")
		linger    = fs.Duration("linger", server.DefaultLinger, "after the grace, how long to wait for clients to fetch the async jobs that ended meanwhile")
		maxSize   = fs.Int("max-size", 0, "largest width or height (0 = twice the model's default size)")
		memBudget = fs.String("memory-budget", "", "memory the requests in flight may need together, e.g. 6GiB (default 80% of what the machine or cgroup has free once the model is loaded); past it a request waits, and one that can never fit gets 400")
		loraDir   = fs.String("lora-dir", "", "folder of LoRA files prompts may apply by name (<lora:name:0.8>; single-file checkpoints only), listed at /sdapi/v1/loras")
		embedDir  = fs.String("embeddings-dir", "", "folder of textual-inversion embeddings prompts may use by name (single-file checkpoints only), listed at /sdapi/v1/embeddings")
		tiled     = fs.String("tiled-vae", "auto", "decode (and encode) images in overlapping VAE tiles: auto = only when the plain decode would not fit the memory budget, on, off")
		stepCache = fs.Int("step-cache", 0, "DeepCache step caching: run the full UNet every N steps and its shallow path on cached deep features in between (0 = off; faster, images change a little: BENCHMARKS.md)")
		cacheAt   = fs.Int("step-cache-branch", 0, "step caching: the skip connection cut, 1 = the shallowest (0: unet.DefaultStepCacheBranch, 2)")
		vaeTile   = fs.Int("vae-tile", 0, "VAE tile size in pixels, a multiple of 8 (0 = the model's native size)")
		chunks    = fs.Int("max-prompt-chunks", 8, "most 75-token chunks in a prompt (past it 400; 0 = no limit)")
		maxSteps  = fs.Int("max-steps", server.DefaultMaxSteps, "most denoising steps per request")
		maxImages = fs.Int("max-images", server.DefaultMaxImages, "most images per request")
		batch     = fs.Int("batch", 4, "dynamic batching: most images per UNet call (1 = off)")
		batchWait = fs.Duration("batch-wait", 20*time.Millisecond, "dynamic batching: how long to wait for more requests")
		fast      = fs.Int("fast-steps", server.DefaultFastSteps, "steps of the fast mode")
		quality   = fs.Int("quality-steps", server.DefaultQualitySteps, "steps of the quality mode")
		mode      = fs.String("mode", "throughput", "engine mode: latency or throughput")
		threads   = fs.Int("threads", 0, "intra-op threads per model (0 = ONNX Runtime's default)")
		grace     = fs.Duration("grace", server.DefaultGrace, "on SIGTERM, how long in-flight work may finish before it is canceled")
		warmup    = fs.Bool("warmup", true, "warm every model up at start, so the first requests are not slow")
		rewrites  = fs.Bool("rewrites", true, "rewrite the model graphs for speed at load (verified against the originals; the files are not modified)")
		int8      = fs.Bool("int8", false, "run the UNet in int8 (sd.WithInt8: MatMuls quantized in the call, convolutions calibrated on the model's example prompts at the first start; opt-in until its quality is shown on the model, see BENCHMARKS.md)")
		int8Text  = fs.Bool("int8-text", false, "with -int8: also quantize the text encoders' MatMuls (sd.Int8.TextEncoder: dynamic, no calibration, checked against float32 at load)")
		taesd     = fs.String("taesd", "", "TAESD (madebyollin's tiny autoencoder: a folder or file, ONNX or safetensors) for live previews: /sdapi/v1/progress current_image and the web page show its decode instead of the latent map")
		previewN  = fs.Int("preview-every", 0, "with -taesd: render a preview every N denoising steps (0 = 5)")
		lenient   = fs.Bool("lenient", false, "A1111 endpoints: ignore the request fields the server cannot honour (listed as warnings) instead of refusing them with 400")
		slackSig  = fs.String("slack-signing-secret", os.Getenv("SLACK_SIGNING_SECRET"), "turns on POST /slack/command, verified with this Slack signing secret (default $SLACK_SIGNING_SECRET)")
		slackBot  = fs.String("slack-bot-token", os.Getenv("SLACK_BOT_TOKEN"), "Slack bot token: upload images to the channel instead of posting links (default $SLACK_BOT_TOKEN)")
		slackAPI  = fs.String("slack-api", server.DefaultSlackAPI, "Slack's Web API URL")
		bf        brokerFlags
	)
	fs.StringVar(&bf.url, "broker", "", "NATS URL of the job queue shared by replicas (nats://host:4222); empty = none, or the embedded one with -data")
	fs.StringVar(&bf.data, "data", "auto", "folder of the embedded job queue and store: async jobs and their results survive restarts; auto = sdpipe/server-<port> in the user's cache folder (jobs in memory with -broker or port 0); none = jobs in memory, lost on restart")
	fs.StringVar(&bf.listen, "broker-listen", "", "also serve the embedded broker at host:port, for other replicas")
	fs.DurationVar(&bf.ackWait, "broker-ack-wait", 0, "how long a replica may hold a queued job without a heartbeat before another gets it (0 = 15s)")
	fs.IntVar(&bf.pull, "pull", 0, "queued jobs a replica runs at once (0 = 2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if sageMaker {
		sageMakerDefaults(fs, addr, model, &bf.data)
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
	budget, err := parseBytes(*memBudget)
	if err != nil {
		return fmt.Errorf("-memory-budget: %w", err)
	}
	when, ok := map[string]sd.Switch{"auto": 0, "on": sd.On, "off": sd.Off}[*tiled]
	if !ok {
		return fmt.Errorf("-tiled-vae: %q is not auto, on or off", *tiled)
	}
	opts := []sd.Option{sd.WithMode(m), sd.WithBatching(*batch, *batchWait), sd.WithLogger(log),
		sd.WithMemoryBudget(budget), sd.WithMaxPromptChunks(*chunks), sd.WithTiledVAE(when, *vaeTile)}
	if *taesd != "" {
		opts = append(opts, sd.WithTAESD(*taesd), sd.WithPreviewEvery(*previewN))
	}
	if *loraDir != "" {
		opts = append(opts, sd.WithLoRADir(*loraDir))
	}
	if *embedDir != "" {
		opts = append(opts, sd.WithEmbeddingsDir(*embedDir))
	}
	if *warmup {
		opts = append(opts, sd.WithWarmup(sd.Warmup{}))
	}
	if !*rewrites {
		opts = append(opts, sd.WithoutRewrites())
	}
	if *stepCache > 0 {
		opts = append(opts, sd.WithStepCache(*stepCache, *cacheAt))
	}
	if *int8Text && !*int8 {
		return errors.New("-int8-text needs -int8")
	}
	if *int8 {
		opts = append(opts, sd.WithInt8(sd.Int8{TextEncoder: *int8Text}))
	}
	for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder, sd.VAEEncoder} {
		if *threads > 0 {
			opts = append(opts, sd.WithThreads(c, *threads))
		}
	}
	var models *server.Models
	if *modelsDir != "" {
		mb, err := parseBytes(*modelsMem)
		if err != nil {
			return fmt.Errorf("-models-memory: %w", err)
		}
		models, err = server.NewModels(server.ModelsConfig{Dir: *modelsDir, Budget: mb, Default: *defModel, Logger: log,
			Open: func(ctx context.Context, path string) (server.Engine, error) { return sd.Open(ctx, path, opts...) }})
		if err != nil {
			return err
		}
		defer models.Close()
	}
	var mdl *sd.Model
	var opened sd.LoadReport
	var name, sum string
	if models == nil || *model != "" {
		dir, err := cli.Model(*model)
		if err != nil {
			return err
		}
		start := time.Now()
		if mdl, err = sd.Open(ctx, dir, opts...); err != nil {
			return err
		}
		defer mdl.Close()
		b, _ := mdl.MemoryBudget()
		log.Info("model loaded", "dir", dir, "seconds", time.Since(start).Seconds(), "memory_budget_mib", b>>20)
		opened = mdl.Load()
		hashStart := time.Now()
		if sum, err = sd.HashModel(dir); err != nil {
			return err
		}
		log.Info("model hashed", "sha256", sum, "seconds", time.Since(hashStart).Seconds())
		name = filepath.Base(filepath.Clean(dir))
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	id := *replica
	if id == "" {
		host, _ := os.Hostname()
		id = host + ":" + portOf(ln.Addr())
	}
	cfg := server.Config{
		ReplicaID: id, ModelName: name, ModelSHA256: sum, Models: models, Token: *token, Lenient: *lenient,
		SlackSigningSecret: *slackSig, SlackBotToken: *slackBot, SlackAPIURL: *slackAPI,
		MaxQueue: *queue, MaxBodyBytes: *maxBody, MaxBodyMemory: *bodyMem, MaxConns: *maxConns,
		BodyTimeout: *bodyTime, BodyIdleTimeout: *bodyIdle, IdleTimeout: *idle,
		MaxSize: *maxSize, MaxSteps: *maxSteps, MaxImages: *maxImages,
		FastSteps: *fast, QualitySteps: *quality, Grace: *grace, Linger: *linger,
		Logger: log,
	}
	if mdl != nil {
		cfg.Load = &opened
	}
	closeBroker, err := bf.open(ctx, &cfg, *addr) // broker.go
	if err != nil {
		return errors.Join(err, ln.Close())
	}
	defer closeBroker()
	switch {
	case bf.url != "":
		log.Info("jobs", "broker", bf.url)
	case bf.data != "":
		log.Info("jobs", "data", bf.data)
	default:
		log.Info("jobs", "data", "memory (lost on restart)")
	}
	var eng server.Engine
	if mdl != nil {
		eng = mdl
	}
	srv, err := server.New(eng, cfg)
	if err != nil {
		return errors.Join(err, ln.Close())
	}
	serveErr := srv.Serve(ctx, ln)
	err = serveErr
	if mdl != nil {
		mctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = errors.Join(serveErr, mdl.Shutdown(mctx))
	}
	log.Info("stopped", "err", err)
	return err
}

// parseBytes parses a size such as 6GiB, 512MiB, 6G or 1073741824 ("" is 0).
func parseBytes(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		n      float64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.n
			break
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || f <= 0 || f*mult > math.MaxInt64 {
		return 0, fmt.Errorf("%q is not a positive size such as 6GiB", v)
	}
	return int64(f * mult), nil
}

func portOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return fmt.Sprint(t.Port)
	}
	return a.String()
}
