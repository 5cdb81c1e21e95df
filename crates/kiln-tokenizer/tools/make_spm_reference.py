#!/usr/bin/env python3
"""Build a tiny SentencePiece-style ("llama" model) GGUF with no merges, and the ids transformers'
GGUF tokenizer gives for it: tests/fixtures/tiny_spm.gguf + tests/fixtures/tiny_spm_ids.json.

It exercises what SmolLM2 does not: Metaspace prefix, byte fallback to <0xNN>, merges recovered
from scores (transformers' generate_merges), <unk>/<s>/</s>, a user-defined token, BOS added by
default. Usage: python crates/kiln-tokenizer/tools/make_spm_reference.py (transformers + gguf).
"""

import json
import os
import tempfile

import gguf
from transformers import AutoTokenizer

WORDS = ["the", "hello", "world", "token", "izer", "kiln", "café", "un", "der", "stand", "ing", "s",
         "a", "b", "c", "d", "e", "h", "i", "k", "l", "n", "o", "r", "t", "w", "z", "é", "日", "本"]

STRINGS = ["hello world", " hello  world ", "the tokenizer", "understanding kiln", "café 日本",
           "zzz qqq", "émoji 🙂", "a<think>b</think>", "<s>hello</s>", "\n\ttabs and\nnewlines",
           "", " ", "UPPER case"]


def vocab():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    pieces = ["▁"]
    for w in WORDS:
        pieces += [w, "▁" + w]
    pieces += ["he", "hel", "hell", "wor", "worl", "tok", "toke", "ki", "kil", "th", "▁t", "▁th", "▁w", "▁h",
               "▁k", "▁u", "▁un", "▁s", "▁c", "▁ca", "▁caf", "▁d", "ca", "caf", "iz", "ize", "st", "sta", "stan",
               "de", "in", "▁▁", "▁▁▁"]
    seen = set(tokens)
    for i, p in enumerate(pieces):
        if p not in seen:
            seen.add(p)
            tokens.append(p)
            scores.append(-float(i) - len(p) * 0.5)
            types.append(1)
    for t in ["<think>", "</think>"]:
        tokens.append(t)
        scores.append(0.0)
        types.append(4)
    return tokens, scores, types


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.join(here, "..", "tests", "fixtures")
    path = os.path.join(fixtures, "tiny_spm.gguf")
    tokens, scores, types = vocab()
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}{{ eos_token }}{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok = AutoTokenizer.from_pretrained(fixtures, gguf_file="tiny_spm.gguf")
    out = {
        "generator": "crates/kiln-tokenizer/tools/make_spm_reference.py",
        "vocab_size": len(tok),
        "strings": [
            {
                "text": s,
                "ids": tok(s, add_special_tokens=False)["input_ids"],
                "ids_default": tok(s)["input_ids"],
                "decoded": tok.decode(tok(s, add_special_tokens=False)["input_ids"]),
            }
            for s in STRINGS
        ],
    }
    with open(os.path.join(fixtures, "tiny_spm_ids.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(tempfile.gettempdir(), "tiny_spm_backend.json"), "w") as f:
        f.write(tok.backend_tokenizer.to_str(pretty=True))


if __name__ == "__main__":
    main()
