#!/usr/bin/env python3
"""Requantize a GGUF file with llama.cpp's own quantizer (via llama-cpp-python's low-level API).

    python tools/bench/requantize.py IN.gguf OUT.gguf TYPE [--threads N] [--no-check]

TYPE is a llama_ftype name without the LLAMA_FTYPE_ prefix, e.g. Q8_0, Q4_0, Q4_1, Q4_K_M,
MOSTLY_Q8_0 or F16 (case-insensitive). Equivalent to `llama-quantize --allow-requantize IN OUT TYPE`.

Requantizing from an already-quantized file (e.g. Q4_1 -> Q8_0) does NOT recover the original
weights: the result is Q8_0 storage of Q4_1-rounded values. That is fine for speed benchmarks
(same shapes, same kernels), not for accuracy comparisons.

After writing, the output is loaded (vocab + weights, no context) to check it is readable, and
its ftype, size and parameter count are printed. --no-check skips that.
"""
import argparse
import os
import sys
import time

import llama_cpp


def ftype_from_name(name: str) -> int:
    key = name.upper()
    for cand in (f"LLAMA_FTYPE_{key}", f"LLAMA_FTYPE_MOSTLY_{key}"):
        if hasattr(llama_cpp, cand):
            return getattr(llama_cpp, cand)
    known = sorted(n[len("LLAMA_FTYPE_"):] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_"))
    sys.exit(f"unknown type {name!r}; known: {', '.join(known)}")


def check_loads(path: str) -> None:
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        sys.exit(f"check failed: llama.cpp could not load {path}")
    buf = (llama_cpp.ctypes.c_char * 256)()
    llama_cpp.llama_model_desc(model, buf, len(buf))
    size = llama_cpp.llama_model_size(model)
    n_params = llama_cpp.llama_model_n_params(model)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    print(f"check: loaded {path}: {buf.value.decode()}, {size / 2**20:.2f} MiB, "
          f"{n_params / 1e6:.2f} M params, vocab {n_vocab}")
    llama_cpp.llama_model_free(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("type", help="target llama_ftype, e.g. Q8_0")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-check", action="store_true", help="don't load the output afterwards")
    args = ap.parse_args()

    if not os.path.exists(args.input):
        sys.exit(f"input not found: {args.input}")
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        sys.exit("output must differ from input")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = args.threads
    params.ftype = ftype_from_name(args.type)
    params.allow_requantize = True
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(args.input.encode(), args.output.encode(), llama_cpp.ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed with code {rc}")
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MiB) in {time.perf_counter() - t0:.1f} s")
    if not args.no_check:
        check_loads(args.output)
    llama_cpp.llama_backend_free()


if __name__ == "__main__":
    main()
