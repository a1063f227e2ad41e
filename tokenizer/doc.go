// Package tokenizer turns Stable Diffusion prompts into CLIP token ids.
//
// CLIP is a pure-Go port of Hugging Face transformers' CLIPTokenizer (the
// path without ftfy): it gives the same ids for the same vocab.json and
// merges.txt, including the text cleaning of BasicTokenizer (control
// characters dropped, NFC, full Unicode lowercasing with accents kept,
// spaces around CJK ideographs), the CLIP pre-tokenizer regex and
// byte-level BPE with "</w>" word ends. Encode gives the 77 ids that SD
// pipelines feed the text encoder.
//
// EncodeWeighted adds AUTOMATIC1111's prompt syntax: (word) multiplies the
// attention weight by 1.1, [word] divides it by 1.1, (word:1.3) sets a
// factor, \( and \) are literal, and BREAK starts a new chunk. Long prompts
// are split into chunks of 75 content tokens, each BOS + 75 + EOS, moving
// the words after the last comma to the next chunk when that comma lies
// within the last 20 tokens, as A1111 does. PadChunks pads prompts (the
// positive and the negative one) to the same number of chunks.
//
// Unicode: Go's tables are Unicode 15.0, the reference (Python 3.11) uses
// 14.0; characters new in 15.0 are treated as unassigned, so they are
// dropped as the reference drops them.
//
// All types are safe for concurrent use once built.
package tokenizer
