// Command bench measures the engine: latency and throughput of a stream of
// requests run sequentially (the plain loop a user would write on the
// components of an opened folder), through the pipelined engine, through the
// engine with dynamic batching, and a single request in the engine's latency
// mode, all in one process on the same model and requests. Beside the
// timings it measures the machine's matrix-multiply peak through ONNX
// Runtime and ONNX Runtime's thread scaling, so that achieved GFLOP/s and
// speed-ups can be read against what the cores can do. See BENCHMARKS.md.
//
//	go run ./bench                           # generated SD 1.5 model, 8 requests, 256×256, 10 steps
//	go run ./bench -rounds 2 -out /tmp/b     # ABBA: each mode twice, order reversed in round 2
//	go run ./bench -model DIR -arch sd15     # any SD 1.x ONNX folder
//	go run ./bench -attention baddbmm        # the diffusers-converter attention form
//	go run ./bench -compare plain,rewrites,int8,stepcache -size 512 -steps 20 -rounds 2
//	                                         # whole images per library configuration, a child process each
//
// It writes report.json, report.md and timeline.svg to -out (rewritten after
// each stream, so a run cut short keeps its figures) and prints the Markdown
// report. The default model is generated on first use into the cache
// (the per-user cache's models/ folder, 4.3 GB, about half a minute), never into
// the repository.
//
// The harness is the package's Run; Report writes itself as JSON, a
// Markdown table and an SVG timeline. Multiply-accumulate counts (UNetMACs,
// VAEDecoderMACs, TextEncoderMACs) are computed analytically from a
// modelgen.Config, following the graphs internal/modelgen builds. It is a
// command (package main) because the project's layering (deps_test.go) lets
// nothing import bench.
package main
