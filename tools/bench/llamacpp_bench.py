#!/usr/bin/env python3
"""llama-bench-style prefill/decode throughput for one GGUF model, via llama-cpp-python's low-level API.

    python tools/bench/llamacpp_bench.py --model M.gguf --threads 2 \
        --prompt-tokens 512 --gen-tokens 128 --repeats 3 [--json]

What is timed (time.perf_counter_ns around the C call + llama_synchronize; batch filling happens
in Python *outside* the timed region, so Python overhead stays out of the numbers):

  prefill  one llama_decode of a single batch of --prompt-tokens tokens at positions 0..P-1
           (n_batch = n_ubatch = P, so llama.cpp does it in one ubatch, like llama-bench's
           pp512 with -b/-ub >= 512). Only the last token requests logits (as llama-bench).
           tokens/s = P / elapsed.
  decode   then --gen-tokens llama_decode calls of ONE token each, continuing the same sequence
           at positions P..P+G-1 (so attention runs over a 512..639-token KV cache). Each call
           requests logits. tokens/s = G / (sum of the per-call times).
           NOTE: llama-bench's plain `tg128` starts from an EMPTY cache; this is what it would
           report as `tg128 @ d512`. Use --decode-from-empty for the plain tg128 variant
           (cache cleared after prefill, positions 0..G-1).

Tokens: like llama-bench, random ids uniform in [0, n_vocab) from a fixed seed (--seed, default
42, numpy default_rng) -- both the prompt and the decode tokens. Decode tokens are NOT sampled
from the logits (no greedy argmax) so that no Python work sits between the calls; per-token cost
of a transformer does not depend on the token id. The first prompt ids are printed.

Runs: one warm-up (a full prefill + decode, untimed), then --repeats timed runs; the KV cache is
cleared with llama_memory_clear(llama_get_memory(ctx), true) before every run (0.3.36 has no
llama_kv_self_clear). Reported: median over repeats (and the std-dev, like llama-bench's ±).
n_threads = n_threads_batch = --threads. Each run also reports its "cpu share" (process CPU time /
(wall time * threads)); well below 1 means other jobs held the cores and the run is not
representative (a warning is printed). Flash attention off by default (llama-bench's default
-fa 0); --flash-attn to turn it on. KV cache f16 (llama.cpp's default).
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

import numpy as np

import llama_cpp

_LOG_CB = None  # keep the ctypes callback alive


def quiet_llama_logs(verbose: bool) -> None:
    global _LOG_CB
    if verbose:
        return

    # ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line)
    last = [0]

    def _cb(level, text, user_data):  # drop INFO/DEBUG chatter, keep warnings and errors
        if level != 5:
            last[0] = level
        if last[0] in (3, 4):
            sys.stderr.write(text.decode(errors="replace"))

    _LOG_CB = llama_cpp.llama_log_callback(_cb)
    llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


def fill_batch(batch, tokens, pos0: int, logits_last_only: bool) -> None:
    n = len(tokens)
    for i, t in enumerate(tokens):
        batch.token[i] = int(t)
        batch.pos[i] = pos0 + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if (not logits_last_only or i == n - 1) else 0
    batch.n_tokens = n


def decode_timed(ctx, batch) -> int:
    t0 = time.perf_counter_ns()
    rc = llama_cpp.llama_decode(ctx, batch)
    llama_cpp.llama_synchronize(ctx)
    dt = time.perf_counter_ns() - t0
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")
    return dt


def one_run(ctx, mem, pbatch, gbatch, prompt, gen, decode_from_empty: bool):
    """Returns (prefill_ns, decode_ns_total, prefill_cpu_ns, prefill_wall_ns, decode_cpu_ns, decode_wall_ns).

    The cpu/wall pairs (process CPU time vs wall time of the whole phase) show whether the
    process actually got its cores: cpu / (wall * threads) well below 1 means other jobs took
    them, and ggml's spinning barrier then makes the t/s collapse far more than proportionally.
    """
    llama_cpp.llama_memory_clear(mem, True)
    fill_batch(pbatch, prompt, 0, logits_last_only=True)
    c0, w0 = time.process_time_ns(), time.perf_counter_ns()
    t_pp = decode_timed(ctx, pbatch)
    pp_cpu, pp_wall = time.process_time_ns() - c0, time.perf_counter_ns() - w0
    pos0 = len(prompt)
    if decode_from_empty:
        llama_cpp.llama_memory_clear(mem, True)
        pos0 = 0
    t_tg = 0
    c0, w0 = time.process_time_ns(), time.perf_counter_ns()
    for i, tok in enumerate(gen):
        fill_batch(gbatch, [tok], pos0 + i, logits_last_only=True)
        t_tg += decode_timed(ctx, gbatch)
    tg_cpu, tg_wall = time.process_time_ns() - c0, time.perf_counter_ns() - w0
    return t_pp, t_tg, pp_cpu, pp_wall, tg_cpu, tg_wall


def fmt_rate(vals):
    med = statistics.median(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{med:.2f} ± {sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--flash-attn", action="store_true", help="enable flash attention (llama-bench -fa 1)")
    ap.add_argument("--decode-from-empty", action="store_true",
                    help="decode from an empty KV cache (llama-bench tg128) instead of after the prompt")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object on the last stdout line (after the table)")
    ap.add_argument("--verbose", action="store_true", help="keep llama.cpp's INFO logs")
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.repeats < 1:
        sys.exit("--prompt-tokens, --gen-tokens and --repeats must be >= 1")
    if not os.path.exists(args.model):
        sys.exit(f"model not found: {args.model}")

    sys.stdout.reconfigure(line_buffering=True)  # keep stdout/stderr in order when piped
    quiet_llama_logs(args.verbose)
    llama_cpp.llama_backend_init()
    system_info = llama_cpp.llama_print_system_info().decode().strip()
    print(f"llama-cpp-python {llama_cpp.__version__}")
    print(f"system_info: {system_info}")

    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        sys.exit(f"failed to load {args.model}")
    desc_buf = (ctypes.c_char * 256)()
    llama_cpp.llama_model_desc(model, desc_buf, len(desc_buf))
    desc = desc_buf.value.decode()
    size = llama_cpp.llama_model_size(model)
    n_params = llama_cpp.llama_model_n_params(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    P, G = args.prompt_tokens, args.gen_tokens
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = P + G
    cparams.n_batch = P
    cparams.n_ubatch = P
    cparams.n_seq_max = 1
    cparams.n_threads = args.threads
    cparams.n_threads_batch = args.threads
    cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if args.flash_attn
                               else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    cparams.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        sys.exit("failed to create context")
    n_ctx = llama_cpp.llama_n_ctx(ctx)
    if n_ctx < P + G:
        sys.exit(f"context too small: n_ctx={n_ctx} < {P + G}")
    mem = llama_cpp.llama_get_memory(ctx)

    rng = np.random.default_rng(args.seed)
    prompt = rng.integers(0, n_vocab, size=P).tolist()
    gen = rng.integers(0, n_vocab, size=G).tolist()
    print(f"prompt: {P} random token ids in [0, {n_vocab}) seed {args.seed}: {prompt[:8]} ...")
    print(f"decode: {G} random token ids (not sampled), positions "
          f"{'0' if args.decode_from_empty else P}..{(0 if args.decode_from_empty else P) + G - 1}")

    pbatch = llama_cpp.llama_batch_init(P, 0, 1)
    gbatch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        one_run(ctx, mem, pbatch, gbatch, prompt, gen, args.decode_from_empty)  # warm-up
        pp_rates, tg_rates, pp_share, tg_share = [], [], [], []
        for r in range(args.repeats):
            t_pp, t_tg, ppc, ppw, tgc, tgw = one_run(ctx, mem, pbatch, gbatch, prompt, gen, args.decode_from_empty)
            pp_rates.append(P / (t_pp / 1e9))
            tg_rates.append(G / (t_tg / 1e9))
            pp_share.append(ppc / (ppw * args.threads))
            tg_share.append(tgc / (tgw * args.threads))
            print(f"  run {r + 1}/{args.repeats}: prefill {pp_rates[-1]:.2f} t/s, decode {tg_rates[-1]:.2f} t/s"
                  f"  (cpu share {pp_share[-1]:.2f} / {tg_share[-1]:.2f})", file=sys.stderr)
    finally:
        llama_cpp.llama_batch_free(pbatch)
        llama_cpp.llama_batch_free(gbatch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
        llama_cpp.llama_backend_free()

    worst = min(pp_share + tg_share)
    if worst < 0.9:
        print(f"WARNING: the process got only {worst:.0%} of {args.threads} cores' time in some phase "
              f"(cpu time / (wall * threads)); other load was competing -- these numbers are not "
              f"representative.", file=sys.stderr)
    tg_name = f"tg{G}" if args.decode_from_empty else f"tg{G} @ d{P}"
    fa = " (fa)" if args.flash_attn else ""
    name = os.path.basename(args.model)
    print()
    print(f"model file: {name}  (median ± std-dev over {args.repeats} runs, after 1 warm-up)")
    print()
    print("| model | size | params | backend | threads | test | t/s |")
    print("| ----- | ---: | -----: | ------- | ------: | ---- | --: |")
    for test, vals in ((f"pp{P}", pp_rates), (tg_name, tg_rates)):
        print(f"| {desc} | {size / 2**20:.2f} MiB | {n_params / 1e6:.2f} M | CPU{fa} | {args.threads} "
              f"| {test} | {fmt_rate(vals)} |")

    if args.json:
        print(json.dumps({
            "prefill_tokens_per_s": statistics.median(pp_rates),
            "decode_tokens_per_s": statistics.median(tg_rates),
            "prompt_tokens": P,
            "gen_tokens": G,
            "threads": args.threads,
            "repeats": args.repeats,
            "model": args.model,
            "llama_cpp_version": llama_cpp.__version__,
            "system_info": system_info,
            # extras (not in kiln's schema; harmless for consumers that read the keys above)
            "prefill_runs_tokens_per_s": pp_rates,
            "decode_runs_tokens_per_s": tg_rates,
            # process CPU time / (wall time * threads) per run and phase; < ~0.9 = contended run
            "prefill_cpu_share": pp_share,
            "decode_cpu_share": tg_share,
            "decode_from_empty": args.decode_from_empty,
            "flash_attn": args.flash_attn,
            "model_desc": desc,
            "model_size_bytes": size,
            "model_n_params": n_params,
        }))


if __name__ == "__main__":
    main()
