#!/usr/bin/env python3
"""Quantized checkpoints written by the reference packers, for kiln to load:
tests/fixtures/quant_models/<variant>/.

Each variant is the tiny LLaMA of tests/fixtures/server_llama (hidden 64, 2 layers, its
tokenizer) RTN-quantized and packed by tools/quant_layouts.py (the numpy packers of the
published GPTQ / AWQ layouts, independent of kiln), with the dense tensors (embeddings, norms,
LM head) stored in f16 to keep the fixture small. Its reference is transformers (float32) on the
same directory dequantized by tools/quant_layouts.py: reference.json holds the token ids of
`text` and log p(token | prefix) of every token after the first, and the perplexity.

    python tools/make_quant_model_fixtures.py     # ~10 s
"""
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import quant_layouts  # noqa: E402

ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "tests/fixtures/server_llama")
OUT = os.path.join(ROOT, "tests/fixtures/quant_models")
TEXT = ("The quick brown fox jumps over the lazy dog. Quantized weights should give nearly the "
        "same next-token distribution as the float model they came from.")

# name: pack_dir arguments
VARIANTS = {
    "gptq_v1_4bit_g32_sym": dict(method="gptq", bits=4, group_size=32, sym=True, version=1),
    "gptq_v1_4bit_g32_act_order": dict(method="gptq", bits=4, group_size=32, sym=False, version=1,
                                       act_order=True),
    "gptq_v2_3bit_g16_asym": dict(method="gptq", bits=3, group_size=16, sym=False, version=2),
    "gptq_v2_8bit_per_channel_act_order": dict(method="gptq", bits=8, group_size=None, sym=False, version=2,
                                               act_order=True),
    "awq_gemm_4bit_g32": dict(method="awq", bits=4, group_size=32),
}


def float_source(tmp):
    """server_llama with its files resolved (the fixture symlinks config and weights)."""
    d = os.path.join(tmp, "float")
    os.makedirs(d)
    for f in os.listdir(SRC):
        shutil.copy(os.path.realpath(os.path.join(SRC, f)), os.path.join(d, f))
    return d


def dense_to_f16(d):
    p = os.path.join(d, "model.safetensors")
    t = load_file(p)
    t = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in t.items()}
    save_file(t, p, metadata={"format": "pt"})


def reference(qdir, ids):
    with tempfile.TemporaryDirectory() as f:
        quant_layouts.dequantize_dir(qdir, f)
        model = AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    tgt = torch.tensor(ids[1:])
    logprobs = lp[:-1].gather(1, tgt[:, None])[:, 0].tolist()
    return logprobs, math.exp(-sum(logprobs) / len(logprobs))


def main():
    torch.manual_seed(0)
    ids = Tokenizer.from_file(os.path.join(SRC, "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    with tempfile.TemporaryDirectory() as tmp:
        src = float_source(tmp)
        for name, kw in VARIANTS.items():
            out = os.path.join(OUT, name)
            shutil.rmtree(out, ignore_errors=True)
            linears = quant_layouts.pack_dir(src, out, **kw)
            dense_to_f16(out)
            logprobs, ppl = reference(out, ids)
            with open(os.path.join(out, "reference.json"), "w") as f:
                json.dump({"text": TEXT, "token_ids": ids, "token_logprobs": logprobs, "perplexity": ppl,
                           "quantized_linears": linears, "packer": kw}, f, indent=1)
            print(f"{name}: {len(linears)} linears, perplexity {ppl:.4f}")


if __name__ == "__main__":
    main()
