"""A small byte-level BPE in CLIP's format, trained on the captions.

The vocabulary is laid out exactly as CLIP's: the 256 byte-level symbols of
bytes_to_unicode, the same 256 with "</w>", one entry per merge in merge
order, then <|startoftext|> and <|endoftext|>. encode() follows CLIP's
algorithm (lower-case, split into words, lowest-rank merge first), which is
what transformers' CLIPTokenizer and the project's Go tokenizer do.
"""

import json
import os
import re
from collections import Counter

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 77

# Covers the CLIP pre-tokenizer for the ASCII text the captions use.
_PAT = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _word(w):
    b2u = bytes_to_unicode()
    s = "".join(b2u[b] for b in w.encode("utf-8"))
    return tuple(s[:-1]) + (s[-1] + "</w>",)


def train(word_counts):
    """Merges (list of pairs) until every word in word_counts is one token."""
    words = {_word(w): c for w, c in word_counts.items()}
    merges = []
    while True:
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            return merges
        # Most frequent pair; ties broken by the pair itself for determinism.
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        nw = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] = nw.get(tuple(out), 0) + c
        words = nw


class Tokenizer:
    def __init__(self, merges):
        self.merges = list(merges)
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in self.merges]
        vocab += [BOS, EOS]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.bos, self.eos = self.encoder[BOS], self.encoder[EOS]
        self.cache = {}

    def bpe(self, word):
        w = list(_word(word))
        while len(w) > 1:
            pairs = [(self.ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(w, w[1:]))]
            r, _ = min(pairs)
            if r == 1 << 30:
                break
            first, second = self.merges[r]
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == first and w[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            w = out
        return w

    def encode(self, text):
        """BOS, tokens, EOS, padded with EOS to 77 ids (truncated like CLIP)."""
        ids = self.cache.get(text)
        if ids is None:
            toks = []
            for w in _PAT.findall(" ".join(text.lower().split())):
                toks += [self.encoder[t] for t in self.bpe(w)]
            toks = toks[: MAX_LEN - 2]
            ids = [self.bos] + toks + [self.eos] * (MAX_LEN - 1 - len(toks))
            self.cache[text] = ids
        return ids

    def save(self, d):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in self.merges:
                f.write(f"{a} {b}\n")
        tok = lambda s, norm: {"content": s, "lstrip": False, "normalized": norm, "rstrip": False, "single_word": False}
        special = {"bos_token": tok(BOS, True), "eos_token": tok(EOS, False), "pad_token": tok(EOS, False), "unk_token": tok(EOS, False)}
        with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
            json.dump(special, f, indent=2)
            f.write("\n")
        cfg = {
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(self.bos): dict(tok(BOS, True), special=True),
                str(self.eos): dict(tok(EOS, False), special=True),
            },
            "bos_token": BOS,
            "clean_up_tokenization_spaces": True,
            "do_lower_case": True,
            "eos_token": EOS,
            "errors": "replace",
            "model_max_length": MAX_LEN,
            "pad_token": EOS,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": EOS,
        }
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
