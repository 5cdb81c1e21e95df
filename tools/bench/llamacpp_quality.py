#!/usr/bin/env python3
"""llama.cpp's own quality report for GGUF files against a base GGUF, as
`llama-perplexity --kl-divergence` computes it: perplexity of each, KL(P_base || P_model) per
token (mean, p99), top-1 agreement, over consecutive windows of the same token ids.

    python tools/bench/llamacpp_quality.py --base F32.gguf --ids SCORE.json [--context 512]
        MODEL.gguf ... [--json]

SCORE.json is `kiln score --json` output: its `token_ids` are the tokens scored (so llama.cpp
and kiln score the very same windows). Every window runs from an empty cache; each position
predicts the next token of its window. Runs the models side by side, window by window, so
only one window of logits per model is held.
"""
import argparse
import json
import math
import os

import numpy as np
from llama_cpp import Llama


def load(path, context, threads):
    return Llama(model_path=path, n_ctx=context, n_batch=context, n_ubatch=context, logits_all=True,
                 n_threads=threads, n_threads_batch=threads, verbose=False)


def window_logprobs(llm, window):
    llm.reset()
    llm.eval(window)
    logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--base", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ids = json.load(open(a.ids))["token_ids"]
    base = load(a.base, a.context, a.threads)
    models = {m: load(m, a.context, a.threads) for m in a.models}
    base_nll, n = 0.0, 0
    acc = {m: dict(nll=0.0, kl=[], same=0) for m in models}
    for start in range(0, len(ids), a.context):
        w = ids[start:start + a.context]
        if len(w) < 2:
            continue
        inp, tgt = w[:-1], np.array(w[1:])
        lb = window_logprobs(base, inp)
        rows = np.arange(len(tgt))
        base_nll -= lb[rows, tgt].sum()
        n += len(tgt)
        pb = np.exp(lb)
        for m, llm in models.items():
            lm = window_logprobs(llm, inp)
            acc[m]["nll"] -= lm[rows, tgt].sum()
            acc[m]["kl"].extend((pb * (lb - lm)).sum(axis=1).tolist())
            acc[m]["same"] += int((lb.argmax(1) == lm.argmax(1)).sum())
    base_ppl = math.exp(base_nll / n)
    out = []
    for m, r in acc.items():
        ppl = math.exp(r["nll"] / n)
        kl = np.array(r["kl"])
        out.append(dict(model=m, base=a.base, n_scored=n, context=a.context, perplexity=ppl,
                        reference_perplexity=base_ppl, perplexity_change_pct=(ppl / base_ppl - 1) * 100,
                        kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                        kl_max=float(kl.max()), top1_agreement=r["same"] / n))
    if a.json:
        for r in out:
            print(json.dumps(r))
        return
    print(f"base {a.base}: perplexity {base_ppl:.4f} over {n} tokens")
    for r in out:
        print(f"{os.path.basename(r['model'])}: perplexity {r['perplexity']:.4f} ({r['perplexity_change_pct']:+.2f}%), "
              f"KL mean {r['kl_mean']:.5f} p99 {r['kl_p99']:.4f}, top-1 {100 * r['top1_agreement']:.2f}%")


if __name__ == "__main__":
    main()
