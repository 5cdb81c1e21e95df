#!/usr/bin/env python3
"""kiln vs sentence-transformers (PyTorch), side by side: sentence embeddings with MiniLM.

Same model directory, same sentences, same batch size and thread count; runs interleaved
(kiln, torch, kiln, torch, ...) so load on a shared machine hits both alike. Times only the
embedding (tokenization + forward + pooling), never loading:
  kiln:  `kiln embed --json --threads T --batch-size B --file F`, its JSON `timings.embed_ms`
  torch: `SentenceTransformer.encode(sentences, batch_size=B)` with torch.set_num_threads(T),
         after one warm-up call, wall time of the call
Prints sentences/s, the kiln/torch ratio of each round and their median, and GFLOP/s: the
matmul FLOPs of the unpadded tokens (2 * params-touched per token for the Linear layers plus
4 * len * hidden per token for attention scores and values, per layer). sentence-transformers
sorts inputs by length before batching, so its padding is small; its GFLOP/s counts the same
useful work, not the padded work.

    /work/refvenv/bin/python tools/bench/encoder_bench.py [--kiln target/release/kiln]
        [--model models/all-MiniLM-L6-v2] [--n 256] [--words 20] [--batch-size 32]
        [--threads 2] [--rounds 3] [--json] [--kiln-arg=--quantize --kiln-arg=int8]

--kiln-arg passes an argument on to `kiln embed` (repeat it): with `--quantize int8` the
min cosine column is kiln's int8 embeddings against sentence-transformers' f32 ones.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sentences(n, words, seed=0):
    """n sentences of about `words` words, drawn from the GPL-3 text (fixed seed)."""
    text = open("/usr/share/common-licenses/GPL-3").read().split()
    vocab = [w for w in text if w.isalpha()]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = max(3, int(rng.gauss(words, 4)))
        s = " ".join(rng.choice(vocab) for _ in range(k))
        out.append(s[0].upper() + s[1:] + ".")
    return out


def flops(lens, cfg):
    h, i, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    total = 0
    for n in lens:
        linear = 2 * n * (4 * h * h + 2 * h * i)
        attn = 2 * 2 * n * n * h
        total += L * (linear + attn)
    return total


def run_kiln(kiln, model, path, threads, batch, extra=()):
    cmd = [kiln, "embed", "--model", model, "--json", "--threads", str(threads),
           "--batch-size", str(batch), "--file", path, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"kiln failed: {p.stderr}")
    out = json.loads(p.stdout)
    return out["timings"]["embed_ms"] / 1e3, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--words", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--kiln-arg", action="append", default=[], help="passed on to kiln embed")
    a = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    sents = sentences(a.n, a.words)
    st = SentenceTransformer(a.model, device="cpu")
    st.eval()
    tok = st.tokenizer
    lens = [min(len(tok(s)["input_ids"]), st.max_seq_length) for s in sents]
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    gflop = flops(lens, cfg) / 1e9

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(sents) + "\n")
        path = f.name
    st.encode(sents[: a.batch_size], batch_size=a.batch_size)  # warm-up
    rounds = []
    try:
        for _ in range(a.rounds):
            tk, out = run_kiln(a.kiln, a.model, path, a.threads, a.batch_size, a.kiln_arg)
            t0 = time.perf_counter()
            ref = st.encode(sents, batch_size=a.batch_size, convert_to_numpy=True)
            tt = time.perf_counter() - t0
            kv = np.asarray(out["embeddings"], dtype=np.float32)
            cos = float((kv * ref).sum(1).min() / 1.0)
            rounds.append(dict(kiln_s=tk, torch_s=tt, kiln_sps=a.n / tk, torch_sps=a.n / tt,
                               ratio=tt / tk, kiln_gflops=gflop / tk, torch_gflops=gflop / tt,
                               min_cosine=cos))
    finally:
        os.unlink(path)
    med = lambda k: statistics.median(r[k] for r in rounds)
    summary = dict(
        n_sentences=a.n, tokens=sum(lens), mean_tokens=sum(lens) / len(lens), gflop=gflop,
        batch_size=a.batch_size, threads=a.threads, kiln_args=a.kiln_arg, torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(), loadavg=os.getloadavg(), rounds=rounds,
        median_ratio=med("ratio"), median_kiln_sps=med("kiln_sps"), median_torch_sps=med("torch_sps"),
        median_kiln_gflops=med("kiln_gflops"), median_torch_gflops=med("torch_gflops"))
    if a.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{a.n} sentences, {sum(lens)} tokens (mean {sum(lens)/len(lens):.1f}), {gflop:.1f} GFLOP, "
          f"batch {a.batch_size}, {a.threads} threads, load average {os.getloadavg()}")
    print(f"{'round':>5} {'kiln s/s':>9} {'torch s/s':>9} {'ratio':>6} {'kiln GF/s':>9} {'torch GF/s':>10} {'min cos':>8}")
    for i, r in enumerate(rounds):
        print(f"{i:>5} {r['kiln_sps']:>9.1f} {r['torch_sps']:>9.1f} {r['ratio']:>6.2f} "
              f"{r['kiln_gflops']:>9.1f} {r['torch_gflops']:>10.1f} {r['min_cosine']:>8.5f}")
    print(f"median ratio kiln/torch: {summary['median_ratio']:.2f}x "
          f"(kiln {summary['median_kiln_sps']:.1f} sentences/s, {summary['median_kiln_gflops']:.1f} GFLOP/s; "
          f"torch {summary['median_torch_sps']:.1f} sentences/s, {summary['median_torch_gflops']:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
