// Package rewrite rewrites the ONNX graph of a Stable Diffusion component
// into a faster equivalent before ONNX Runtime loads it, without modifying
// the user's files.
//
// Apply rewrites a decoded model in memory: each Rewrite matches one exact
// node pattern and replaces it; a site that only partly matches is left as
// it is and reported in Report.Refused. Initializers stored as external
// data keep their location and offset entries, so the rewritten graph still
// reads the original weight files.
//
// Prepare does the same for a model file and hands back a model ONNX
// Runtime can open: the rewritten model.onnx written into a cache folder
// beside hard links to the original external data files (ONNX Runtime 1.29
// refuses symbolic links that leave the model's folder, and accepts hard
// links), together with the rewritten bytes for ort.OpenData, which reads
// the external data from the original folder. The cache is keyed by the
// content hash of the original model file, the identity of its external
// data files and the rewrite set, so a second open reuses the first one's
// work.
//
// Verify runs an original and a rewritten model on the same inputs and
// reports the largest difference, so that a rewrite is used only when it
// has been proven to keep the outputs.
//
// All functions are safe for concurrent use on distinct models.
package rewrite
