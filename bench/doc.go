// Package bench measures the engine: latency and throughput of a stream of
// requests run sequentially (the plain loop a user would write on the
// components of an opened folder), through the pipelined engine, through the
// engine with dynamic batching, and a single request in the engine's latency
// mode, all in one process on the same model and requests. Beside the
// timings it measures the machine's matrix-multiply peak through ONNX
// Runtime and ONNX Runtime's thread scaling, so that achieved GFLOP/s and
// speed-ups can be read against what the cores can do.
//
// Run returns a Report, which writes itself as JSON (WriteJSON), a Markdown
// table (WriteMarkdown) and an SVG timeline of every request's stages
// (WriteTimelineSVG). The command bench/cmd/sdbench runs it; BENCHMARKS.md at
// the repository root holds the figures and how to reproduce them.
//
// Multiply-accumulate counts (UNetMACs, VAEDecoderMACs, TextEncoderMACs) are
// computed analytically from a modelgen.Config, following the graphs that
// internal/modelgen builds.
//
// Nothing in this package prints; progress goes to Config.Logger.
package bench
