#!/usr/bin/env python3
"""Issue 13's quality table: kiln's own quantizers and llama.cpp's on the same float SmolLM2.

    python tools/bench/quant_quality.py [--kiln target/release/kiln] [--out /tmp/quant-quality]
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--held-out GPL-3] [--calib Apache-2.0]
        [--context 512] [--only NAME,...] [--markdown FILE]

1. `kiln quantize --method none` dequantizes the GGUF into a float (f32) Hugging Face directory:
   the base every row is compared with.
2. kiln quantizes that float directory: RTN, GPTQ (with and without act-order) and AWQ at 4 bits
   group 64 and per channel, int8 per channel and group-wise, calibrated on --calib.
3. llama.cpp requantizes the GGUF (llama_model_quantize, which dequantizes to f32 first, so this
   is quantizing the same float model) to F32, Q4_0, Q4_K_M and Q8_0, and scores them itself
   (llamacpp_quality.py, like llama-perplexity --kl-divergence) against its F32 file.
4. `kiln score --model Q --reference FLOAT --json` on the held-out text, same windows for all.

Needs llama-cpp-python in the Python that runs this (tools/bench/requirements.txt) for the
llama.cpp rows. Each step's result is kept in OUT (delete a row's files to redo it). Prints a
markdown table (and writes it to --markdown) and one JSON line per row to OUT/results.jsonl.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LICENSES = "/usr/share/common-licenses"

# (name, kiln quantize arguments): the kiln rows, all from the float directory.
KILN_ROWS = [
    ("rtn-4bit-g64", ["--method", "rtn", "--bits", "4", "--group-size", "64"]),
    ("gptq-4bit-g64", ["--method", "gptq", "--bits", "4", "--group-size", "64"]),
    ("gptq-4bit-g64-act-order", ["--method", "gptq", "--bits", "4", "--group-size", "64", "--act-order"]),
    ("gptq-4bit-g64-sym-act-order", ["--method", "gptq", "--bits", "4", "--group-size", "64", "--sym",
                                     "--act-order"]),
    ("awq-4bit-g64", ["--method", "awq", "--bits", "4", "--group-size", "64"]),
    ("awq-gptq-4bit-g64-act-order", ["--method", "awq-gptq", "--bits", "4", "--group-size", "64", "--act-order"]),
    ("rtn-4bit-per-channel", ["--method", "rtn", "--bits", "4", "--group-size", "-1"]),
    ("gptq-4bit-per-channel", ["--method", "gptq", "--bits", "4", "--group-size", "-1", "--act-order"]),
    ("rtn-int8-per-channel", ["--method", "rtn", "--bits", "8", "--group-size", "-1", "--sym"]),
    ("rtn-int8-g64", ["--method", "rtn", "--bits", "8", "--group-size", "64", "--sym"]),
]
LLAMA_ROWS = ["Q4_0", "Q4_K_M", "Q8_0"]


def run(cmd, **kw):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    return p.stdout, time.time() - t0


def dir_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--out", default="/tmp/quant-quality")
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--held-out", default=os.path.join(LICENSES, "GPL-3"))
    ap.add_argument("--calib", default=os.path.join(LICENSES, "Apache-2.0"))
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", help="comma-separated row names (float is always built)")
    ap.add_argument("--markdown", help="also write the table here")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    only = set(a.only.split(",")) if a.only else None
    threads = ["--threads", str(a.threads)]

    float_dir = os.path.join(a.out, "float")
    if not os.path.exists(os.path.join(float_dir, "config.json")):
        _, s = run([a.kiln, "quantize", "--model", a.model, "--method", "none", "--out", float_dir] + threads)
        print(f"float export: {s:.1f} s", file=sys.stderr)

    rows = [("float", float_dir, None)]
    for name, args in KILN_ROWS:
        if only and name not in only:
            continue
        out = os.path.join(a.out, name)
        done = os.path.join(a.out, f"{name}.quantize.json")
        if not os.path.exists(done):
            out_json, s = run([a.kiln, "quantize", "--model", float_dir, "--calib", a.calib, "--out", out,
                               "--json"] + args + threads)
            with open(done, "w") as f:
                f.write(out_json.strip().splitlines()[-1])
        with open(done) as f:
            secs = json.load(f)["quantize_seconds"]
        print(f"{name}: quantized in {secs:.1f} s", file=sys.stderr)
        rows.append((name, out, secs))
    llama = []
    for t in ["ALL_F32"] + LLAMA_ROWS:
        name = f"llama.cpp-{t}"
        if only and name not in only and t != "ALL_F32":
            continue
        out = os.path.join(a.out, f"{t}.gguf")
        s = None
        if not os.path.exists(out):
            _, s = run([sys.executable, os.path.join(HERE, "requantize.py"), a.model, out, t, "--threads",
                        str(a.threads)])
        llama.append((name, out, s))

    results = []
    for name, path, secs in rows:
        cached = os.path.join(a.out, f"{name}.score.json")
        if not os.path.exists(cached):
            out_json, s = run([a.kiln, "score", "--model", path, "--reference", float_dir, "--file",
                               a.held_out, "--context", str(a.context), "--json"] + threads)
            r = json.loads(out_json.strip().splitlines()[-1])
            r.update(score_seconds=s)
            with open(cached, "w") as f:
                json.dump(r, f)
        with open(cached) as f:
            r = json.load(f)
        r.update(name=name, quantize_seconds=secs, bytes=dir_bytes(path))
        results.append(r)
        print(f"{name}: ppl {r['perplexity']:.4f} ({r['perplexity_change_pct']:+.2f}%), "
              f"KL {r['kl_mean']:.5f}, top-1 {100 * r['top1_agreement']:.2f}%", file=sys.stderr)
    # llama.cpp's files scored by llama.cpp itself against its own f32 conversion (the same
    # float weights), on kiln's token ids: kiln cannot run every type Q4_K_M mixes in (Q5_0).
    if len(llama) > 1:
        ids = os.path.join(a.out, "float.ids.json")
        if not os.path.exists(ids):
            out_json, _ = run([a.kiln, "score", "--model", float_dir, "--file", a.held_out, "--context",
                               str(a.context), "--json"] + threads)
            with open(ids, "w") as f:
                f.write(out_json)
        cached = os.path.join(a.out, "llamacpp.jsonl")
        want = [p for _, p, _ in llama[1:]]
        have = [json.loads(l) for l in open(cached)] if os.path.exists(cached) else []
        if sorted(r["model"] for r in have) != sorted(want):
            out_json, _ = run([sys.executable, os.path.join(HERE, "llamacpp_quality.py"), "--base", llama[0][1],
                               "--ids", ids, "--context", str(a.context), "--threads", str(a.threads), "--json"]
                              + want)
            with open(cached, "w") as f:
                f.write(out_json)
            have = [json.loads(l) for l in out_json.strip().splitlines()]
        by_model = {r["model"]: r for r in have}
        for name, path, secs in llama[1:]:
            r = dict(by_model[path], name=name, quantize_seconds=secs, bytes=dir_bytes(path),
                     n_tokens=results[0]["n_tokens"], n_windows=results[0]["n_windows"])
            results.append(r)
            print(f"{name}: ppl {r['perplexity']:.4f} ({r['perplexity_change_pct']:+.2f}%), "
                  f"KL {r['kl_mean']:.5f}, top-1 {100 * r['top1_agreement']:.2f}% (llama.cpp)", file=sys.stderr)
    with open(os.path.join(a.out, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")

    lines = [
        f"Held-out `{os.path.basename(a.held_out)}` ({results[0]['n_tokens']} tokens, {results[0]['n_windows']} "
        f"windows of {a.context}); calibration `{os.path.basename(a.calib)}`; reference: the float model.",
        "",
        "| model | weights MB | perplexity | Δ ppl | KL mean | KL p99 | top-1 | quantize s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        q = "" if r["quantize_seconds"] is None else f"{r['quantize_seconds']:.1f}"
        lines.append(
            f"| {r['name']} | {r['bytes'] / 1e6:.1f} | {r['perplexity']:.4f} | {r['perplexity_change_pct']:+.2f}% "
            f"| {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | {100 * r['top1_agreement']:.2f}% | {q} |")
    table = "\n".join(lines)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
