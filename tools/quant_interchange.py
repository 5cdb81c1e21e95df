#!/usr/bin/env python3
"""Interchange check: a quantized Hugging Face directory (GPTQ or AWQ layout, e.g. written by
`kiln quantize`) read by the independent NumPy unpacker of the published layouts
(`tools/quant_layouts.py`), run by transformers in float32 over the same token windows as
`kiln score`, and its perplexity printed — to compare with kiln's own on that directory.

    python tools/quant_interchange.py QDIR --ids SCORE.json [--context 512]

SCORE.json is `kiln score --json` output (its token_ids), so both score the very same tokens.
"""
import argparse
import json
import math
import os
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_layouts  # noqa: E402


def perplexity(model, ids, context):
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), context):
            w = ids[start:start + context]
            if len(w) < 2:
                continue
            logits = model(torch.tensor([w])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            tgt = torch.tensor(w[1:])
            nll -= lp[:-1].gather(1, tgt[:, None]).sum().item()
            n += len(w) - 1
    return math.exp(nll / n), n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qdir")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--context", type=int, default=512)
    a = ap.parse_args()
    ids = json.load(open(a.ids))["token_ids"]
    with tempfile.TemporaryDirectory() as out:
        quant_layouts.dequantize_dir(a.qdir, out)
        model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
        model.eval()
        ppl, n = perplexity(model, ids, a.context)
    print(json.dumps({"perplexity": ppl, "n_scored": n, "context": a.context}))


if __name__ == "__main__":
    main()
