#!/usr/bin/env python3
"""Random-weight checkpoints for the mixture-of-experts speed comparison (BENCHMARKS.md).

Writes two Hugging Face directories (f32 safetensors, config.json, SmolLM2's tokenizer.json):
  OUT/dense  LlamaForCausalLM at SmolLM2-135M's shape: hidden 576, 30 layers, 9 heads / 3 kv
             heads, intermediate 1536, vocab 49152, tied embeddings
  OUT/moe    MixtralForCausalLM, the same but each MLP is 8 experts of intermediate 768, top-2:
             the same active parameters per token (2 x 768 = 1536)
Weights are transformers' own initialization (normal, std 0.02) under a fixed seed: speed does
not depend on the values, and transformers loads both, so they are real checkpoints.

Usage: python tools/bench/make_moe_bench_models.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]
       [--out /tmp/kiln-moe-bench]
Without --gguf (a machine without the `gguf` package or the model) the tokenizer is a word-level
one over 49152 placeholder tokens: `kiln bench` feeds random ids and never reads the text.
then:  kiln bench --model /tmp/kiln-moe-bench/dense ; kiln bench --model /tmp/kiln-moe-bench/moe
"""

import argparse
import os

import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, MixtralConfig,
                          MixtralForCausalLM)

SHAPE = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="SmolLM2 GGUF, for its tokenizer")
    ap.add_argument("--out", default="/tmp/kiln-moe-bench")
    a = ap.parse_args()
    if a.gguf:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(a.gguf)),
                                            gguf_file=os.path.basename(a.gguf))
    else:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        vocab = {f"t{i}": i for i in range(SHAPE["vocab_size"])}
        t = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
        t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="t0")
    torch.manual_seed(0)
    for name, cls, cfg in [
        ("dense", LlamaForCausalLM, LlamaConfig(intermediate_size=1536, **SHAPE)),
        ("moe", MixtralForCausalLM, MixtralConfig(intermediate_size=768, num_local_experts=8,
                                                  num_experts_per_tok=2, **SHAPE)),
    ]:
        model = cls(cfg).eval()
        d = os.path.join(a.out, name)
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        n = sum(p.numel() for p in model.parameters())
        print(f"{d}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
