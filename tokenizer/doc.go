// Package tokenizer turns Stable Diffusion prompts into CLIP token ids.
//
// CLIP is a pure-Go port of Hugging Face transformers' CLIPTokenizer: for
// the same vocab.json and merges.txt it gives the same ids. By default it
// follows transformers' path without ftfy: BasicTokenizer's cleaning
// (U+0000, U+FFFD and control/format/unassigned characters dropped, white
// space normalized, spaces around CJK ideographs, NFC, full Unicode
// lowercasing with accents kept), the CLIP pre-tokenizer regex and
// byte-level BPE with "</w>" word ends; literal <|startoftext|> and
// <|endoftext|> become their special ids. Config.Ftfy selects the path
// taken when ftfy is installed instead. Encode gives the 77 ids that SD
// pipelines feed the text encoder; EncodeUntruncated gives every token.
//
// EncodeWeighted adds AUTOMATIC1111's prompt syntax (see ParseWeighted):
// (word) multiplies the attention weight by 1.1, [word] divides it by 1.1,
// (word:1.3) sets a factor, \( and \) are literal, and BREAK starts a new
// chunk. Long prompts are split into chunks of 75 content tokens, each
// BOS + 75 + EOS, moving the words after the last comma to the next chunk
// when that comma lies within the last 20 tokens, as A1111 does. PadChunks
// pads prompts (the positive and the negative one) to the same number of
// chunks.
//
// Unicode: Go's tables are Unicode 15.0, the reference (Python 3.11) uses
// 14.0. Characters new in 15.0 are treated as unassigned and dropped, as
// the reference drops them; all other categories and case mappings agree.
//
// Input may be any string: invalid UTF-8 is read as U+FFFD. A *CLIP is
// safe for concurrent use; its BPE cache is bounded.
package tokenizer
