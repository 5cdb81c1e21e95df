"""The published GPTQ and AWQ checkpoint layouts in numpy, independent of kiln's Rust.

Written from the format as AutoGPTQ / GPTQModel and AutoAWQ define it (their `pack` routines and
the buffer shapes of their QuantLinear modules), not from kiln's code, so that it can judge
kiln's reader and writer:

GPTQ, per quantized linear `{name}` (out_features x in_features, groups along the input):
  qweight int32 (in*bits/32, out)   the integers, packed along the input dimension:
      bits 2/4/8: word row r holds inputs r*(32/bits) + j at bits j*bits (low bits first);
      bits 3: each 32 inputs fill 3 words as 10 values | 1 split | 10 | 1 split | 10
  qzeros  int32 (n_groups, out*bits/32)   the zero points, packed the same way along the output
  scales  f16   (n_groups, out)
  g_idx   int32 (in,)   the group of each input column
  checkpoint_format "gptq" (v1) stores zero - 1, "gptq_v2" stores zero.
  w[o, c] = scales[g, o] * (q[c, o] - zero[g, o]),  g = g_idx[c]

AWQ "gemm" (4 bits, zero_point true):
  qweight int32 (in, out/8)   packed along the OUTPUT dimension, nibble i of word j holding
                              output 8j + [0, 2, 4, 6, 1, 3, 5, 7][i]
  qzeros  int32 (n_groups, out/8)   the same way, zero points as they are
  scales  f16   (n_groups, out)
AWQ "gemv": qweight (out, in/8) packed along the input in plain order; qzeros (out, zw) plain
  order, zw = ceil(n_groups/8) rounded up to a multiple of 1/2/4 for groups >=128/64/32;
  scales (out, zw*8); padding is zero.

Directory tools:
  dequantize_dir(src, out)  a GPTQ/AWQ Hugging Face directory -> a float one
  pack_dir(src, out, ...)   a float llama directory -> RTN-quantized GPTQ/AWQ directory
Run as a script: `python tools/quant_layouts.py dequantize SRC OUT` or
`python tools/quant_layouts.py pack SRC OUT --method gptq --bits 4 --group-size 32 ...`.
"""

import argparse
import json
import os
import shutil

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
GPTQ_BITS = (2, 3, 4, 8)


# ---------------------------------------------------------------- packing along axis 0


def _pack_rows(v, bits):
    """Packs the integers `v` (n, m) along axis 0 into uint32 words (n*bits/32, m)."""
    v = np.asarray(v).astype(np.uint32)
    n, m = v.shape
    assert (n * bits) % 32 == 0, f"{n} values x {bits} bits is not whole words"
    out = np.zeros((n * bits // 32, m), dtype=np.uint32)
    if bits in (2, 4, 8):
        per = 32 // bits
        for r in range(out.shape[0]):
            for j in range(per):
                out[r] |= v[r * per + j] << np.uint32(bits * j)
        return out
    assert bits == 3, bits
    for blk in range(n // 32):
        x = v[32 * blk: 32 * blk + 32]
        a, b, c = (out[3 * blk + k] for k in range(3))
        for j in range(10):
            a |= x[j] << np.uint32(3 * j)
        a |= (x[10] << np.uint32(30)) & np.uint32(0xFFFFFFFF)
        b |= (x[10] >> np.uint32(2)) & np.uint32(1)
        for j in range(10):
            b |= x[11 + j] << np.uint32(3 * j + 1)
        b |= (x[21] << np.uint32(31)) & np.uint32(0xFFFFFFFF)
        c |= (x[21] >> np.uint32(1)) & np.uint32(3)
        for j in range(10):
            c |= x[22 + j] << np.uint32(3 * j + 2)
    return out


def _unpack_rows(words, bits, n):
    """The inverse of `_pack_rows`: (n*bits/32, m) words -> (n, m) integers."""
    w = np.asarray(words)
    w = w.view(np.uint32) if w.dtype == np.int32 else w.astype(np.uint32)
    assert w.shape[0] * 32 == n * bits, f"{w.shape[0]} words do not hold {n} {bits}-bit values"
    m = w.shape[1]
    out = np.zeros((n, m), dtype=np.int64)
    mask = (1 << bits) - 1
    if bits in (2, 4, 8):
        per = 32 // bits
        for r in range(w.shape[0]):
            for j in range(per):
                out[r * per + j] = (w[r] >> np.uint32(bits * j)) & mask
        return out
    assert bits == 3, bits
    for blk in range(n // 32):
        a, b, c = (w[3 * blk + k].astype(np.int64) for k in range(3))
        o = out[32 * blk: 32 * blk + 32]
        for j in range(10):
            o[j] = (a >> (3 * j)) & 7
            o[11 + j] = (b >> (3 * j + 1)) & 7
            o[22 + j] = (c >> (3 * j + 2)) & 7
        o[10] = ((a >> 30) & 3) | ((b & 1) << 2)
        o[21] = ((b >> 31) & 1) | ((c & 3) << 1)
    return out


def _i32(u):
    return np.ascontiguousarray(u, dtype=np.uint32).view(np.int32)


# ---------------------------------------------------------------- GPTQ


def pack_gptq(q, zeros, scales, g_idx, bits, version):
    """q (out, in), zeros and scales (out, n_groups), g_idx (in,) -> the four GPTQ tensors.

    version 1 ("gptq") stores zero - 1 and cannot hold a zero point of 0.
    """
    assert bits in GPTQ_BITS
    q, zeros = np.asarray(q, dtype=np.int64), np.asarray(zeros, dtype=np.int64)
    out, n_in = q.shape
    stored = zeros.T.copy()  # (n_groups, out)
    if version == 1:
        if (stored == 0).any():
            raise ValueError("gptq v1 stores zero points minus one: a zero point of 0 needs gptq_v2")
        stored -= 1
    return {
        "qweight": _i32(_pack_rows(q.T, bits)),
        "qzeros": _i32(_pack_rows(stored.T, bits).T),
        "scales": np.asarray(scales, dtype=np.float32).T.astype(np.float16).copy(),
        "g_idx": np.asarray(g_idx, dtype=np.int32).copy(),
    }


def unpack_gptq_ints(qweight, qzeros, bits, version):
    """-> q (out, in) and zeros (out, n_groups) as integers (zeros may be 2^bits for a v1 overflow)."""
    n_in = qweight.shape[0] * 32 // bits
    out = qweight.shape[1]
    q = _unpack_rows(qweight, bits, n_in).T
    zeros = _unpack_rows(np.asarray(qzeros).T, bits, out)  # (out, n_groups)
    if version == 1:
        zeros = zeros + 1
    return q, zeros


def unpack_gptq(qweight, qzeros, scales, g_idx, bits, version):
    """The float32 weight (out, in) of a GPTQ linear."""
    q, zeros = unpack_gptq_ints(qweight, qzeros, bits, version)
    g = np.asarray(g_idx, dtype=np.int64)
    s = np.asarray(scales).astype(np.float32).T  # (out, n_groups)
    return (s[:, g] * (q - zeros[:, g]).astype(np.float32)).astype(np.float32)


# ---------------------------------------------------------------- AWQ


def pack_awq(q, zeros, scales, version="gemm"):
    """q (out, in), zeros and scales (out, n_groups), 4 bits -> AWQ qweight, qzeros, scales."""
    q, zeros = np.asarray(q, dtype=np.uint32), np.asarray(zeros, dtype=np.uint32)
    scales = np.asarray(scales, dtype=np.float32)
    out, n_in = q.shape
    n_groups = zeros.shape[1]
    if version == "gemm":
        qt, zt = q.T, zeros.T  # (in, out), (n_groups, out)
        qweight = np.zeros((n_in, out // 8), dtype=np.uint32)
        qzeros = np.zeros((n_groups, out // 8), dtype=np.uint32)
        for col in range(out // 8):
            for i in range(8):
                qweight[:, col] |= qt[:, col * 8 + AWQ_ORDER[i]] << np.uint32(4 * i)
                qzeros[:, col] |= zt[:, col * 8 + AWQ_ORDER[i]] << np.uint32(4 * i)
        return {"qweight": _i32(qweight), "qzeros": _i32(qzeros),
                "scales": scales.T.astype(np.float16).copy()}
    assert version == "gemv", version
    zw = gemv_zeros_width(n_in, n_in // n_groups)
    qweight = np.zeros((out, n_in // 8), dtype=np.uint32)
    for col in range(n_in // 8):
        for i in range(8):
            qweight[:, col] |= q[:, col * 8 + i] << np.uint32(4 * i)
    qzeros = np.zeros((out, zw), dtype=np.uint32)
    for col in range(zw):
        for i in range(8):
            if col * 8 + i < n_groups:
                qzeros[:, col] |= zeros[:, col * 8 + i] << np.uint32(4 * i)
    s = np.zeros((out, zw * 8), dtype=np.float16)
    s[:, :n_groups] = scales
    return {"qweight": _i32(qweight), "qzeros": _i32(qzeros), "scales": s}


def gemv_zeros_width(n_in, group_size):
    mult = 1 if group_size >= 128 else {64: 2, 32: 4}[group_size]
    base = -(-(n_in // group_size) // 8)
    return -(-base // mult) * mult


def unpack_awq_ints(qweight, qzeros, version="gemm", group_size=None):
    """-> q (out, in), zeros (out, n_groups). GEMV needs `group_size` (its zeros are padded)."""
    w = np.asarray(qweight).view(np.uint32)
    z = np.asarray(qzeros).view(np.uint32)
    if version == "gemm":
        n_in, out = w.shape[0], w.shape[1] * 8
        q = np.zeros((n_in, out), dtype=np.int64)
        zeros = np.zeros((z.shape[0], out), dtype=np.int64)
        for col in range(w.shape[1]):
            for i in range(8):
                q[:, col * 8 + AWQ_ORDER[i]] = (w[:, col] >> np.uint32(4 * i)) & 0xF
                zeros[:, col * 8 + AWQ_ORDER[i]] = (z[:, col] >> np.uint32(4 * i)) & 0xF
        return q.T, zeros.T
    assert version == "gemv", version
    out, n_in = w.shape[0], w.shape[1] * 8
    n_groups = n_in // (group_size or n_in)
    q = np.zeros((out, n_in), dtype=np.int64)
    for col in range(w.shape[1]):
        for i in range(8):
            q[:, col * 8 + i] = (w[:, col] >> np.uint32(4 * i)) & 0xF
    zeros = np.zeros((out, n_groups), dtype=np.int64)
    for g in range(n_groups):
        zeros[:, g] = (z[:, g // 8] >> np.uint32(4 * (g % 8))) & 0xF
    return q, zeros


def unpack_awq(qweight, qzeros, scales, version="gemm", group_size=None):
    """The float32 weight (out, in) of an AWQ linear."""
    q, zeros = unpack_awq_ints(qweight, qzeros, version, group_size)
    out, n_in = q.shape
    n_groups = zeros.shape[1]
    s = np.asarray(scales).astype(np.float32)
    s = s.T if version == "gemm" else s[:, :n_groups]
    g = np.arange(n_in) // (n_in // n_groups)
    return (s[:, g] * (q - zeros[:, g]).astype(np.float32)).astype(np.float32)


# ---------------------------------------------------------------- round to nearest


def rtn(w, bits, group_size, sym, g_idx=None, grid="gptq"):
    """Round-to-nearest of w (out, in) in groups -> q (out, in), scales (out, G) f16-valued f32,
    zeros (out, G). Group k is the columns with g_idx == k (default c // group_size).

    grid "gptq": the GPTQ paper's quantizer (range always holds 0; sym: zero 2^(bits-1)).
    grid "awq": AutoAWQ's pseudo_quantize_tensor with zero_point (range = [min, max]).
    The scale is rounded to f16 before the integers are chosen.
    """
    w = np.asarray(w, dtype=np.float32)
    out, n_in = w.shape
    gs = group_size or n_in
    if g_idx is None:
        g_idx = np.arange(n_in) // gs
    n_groups = n_in // gs
    maxq = 2 ** bits - 1
    q = np.zeros((out, n_in), dtype=np.int64)
    scales = np.zeros((out, n_groups), dtype=np.float32)
    zeros = np.zeros((out, n_groups), dtype=np.int64)
    for k in range(n_groups):
        cols = np.nonzero(g_idx == k)[0]
        x = w[:, cols]
        if grid == "awq":
            lo, hi = x.min(1), x.max(1)
            s = np.maximum((hi - lo), 1e-5) / maxq
            s = s.astype(np.float16).astype(np.float32)
            z = np.clip(-np.round(lo / s), 0, maxq)
        else:
            lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
            if sym:
                hi = np.maximum(np.abs(lo), hi)
                lo = np.where(lo < 0, -hi, lo)
            both0 = (lo == 0) & (hi == 0)
            lo, hi = np.where(both0, -1, lo), np.where(both0, 1, hi)
            s = np.maximum((hi - lo) / maxq, np.finfo(np.float32).tiny)
            s = s.astype(np.float16).astype(np.float32)
            z = np.full_like(s, (maxq + 1) // 2) if sym else np.clip(np.round(-lo / s), 0, maxq)
        q[:, cols] = np.clip(np.round(x / s[:, None]) + z[:, None], 0, maxq)
        scales[:, k], zeros[:, k] = s, z
    return q, scales, zeros


def act_order_g_idx(n_in, group_size, rng):
    """GPTQ's desc_act without static groups: columns visited in an activation order `perm`,
    groups assigned in that order: g_idx[perm[j]] = j // group_size."""
    perm = rng.permutation(n_in)
    g_idx = np.zeros(n_in, dtype=np.int64)
    g_idx[perm] = np.arange(n_in) // (group_size or n_in)
    return g_idx


# ---------------------------------------------------------------- directories


def _load_dir(d):
    from safetensors.torch import load_file

    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(load_file(os.path.join(d, f)))
    return tensors


def _is_model_file(f):
    return f == "model.safetensors" or (f.startswith("model-") and f.endswith(".safetensors"))


def _copy_other_files(src, dst):
    """Tokenizer, generation config and the like: everything but the config and the weights."""
    skip = {"config.json", "model.safetensors.index.json", "quantize_config.json", "quant_config.json"}
    for f in os.listdir(src):
        p = os.path.join(src, f)
        if os.path.isfile(p) and f not in skip and not _is_model_file(f):
            shutil.copy(p, os.path.join(dst, f))


def _save(tensors, d, config):
    import torch
    from safetensors.torch import save_file

    os.makedirs(d, exist_ok=True)
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.contiguous())
               for k, v in tensors.items()}
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def dequantize_dir(src_dir, out_dir, dtype="float32"):
    """A GPTQ or AWQ HF directory -> a float HF directory (every `{name}.qweight` group becomes
    `{name}.weight`; other tensors and files copied; config without quantization_config)."""
    import torch

    config = json.load(open(os.path.join(src_dir, "config.json")))
    qc = config.pop("quantization_config")
    method = qc["quant_method"]
    tensors = _load_dir(src_dir)
    out = {}
    linears = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    used = set()
    for name in linears:
        t = {p: tensors[f"{name}.{p}"].numpy() for p in ("qweight", "qzeros", "scales", "g_idx") if f"{name}.{p}" in tensors}
        used.update(f"{name}.{p}" for p in t)
        if method == "gptq":
            version = 2 if qc.get("checkpoint_format", "gptq") == "gptq_v2" else 1
            g_idx = t.get("g_idx")
            if g_idx is None:
                n_in = t["qweight"].shape[0] * 32 // qc["bits"]
                g_idx = np.arange(n_in) // (qc["group_size"] if qc["group_size"] > 0 else n_in)
            w = unpack_gptq(t["qweight"], t["qzeros"], t["scales"], g_idx, qc["bits"], version)
        elif method == "awq":
            assert qc.get("bits", 4) == 4 and qc.get("zero_point", True)
            gs = qc.get("group_size", -1)
            w = unpack_awq(t["qweight"], t["qzeros"], t["scales"], qc.get("version", "gemm").lower(),
                           gs if gs > 0 else None)
        else:
            raise ValueError(f"quant_method {method!r}")
        out[f"{name}.weight"] = torch.from_numpy(w).to(getattr(torch, dtype))
    for k, v in tensors.items():
        if k not in used:
            out[k] = v.to(getattr(torch, dtype)) if v.is_floating_point() else v
    config["dtype" if "dtype" in config else "torch_dtype"] = dtype
    _save(out, out_dir, config)
    _copy_other_files(src_dir, out_dir)
    return sorted(linears)


def _is_quantized_linear(name, t):
    if t.dim() != 2 or not name.endswith(".weight"):
        return False
    return not any(s in name for s in ("lm_head", "embed", "wte", "wpe", "norm"))


def pack_dir(float_dir, out_dir, method, bits=4, group_size=128, sym=True, version=1, act_order=False, seed=0):
    """RTN-quantizes every linear weight of a float HF directory (all 2-D `*.weight` except the
    head, embeddings and norms) into a GPTQ (`version` 1 = "gptq", 2 = "gptq_v2") or AWQ gemm
    directory with the quantization_config AutoGPTQ/GPTQModel or AutoAWQ write. Returns the
    names of the quantized linears. With `act_order` (GPTQ only) every layer gets a random
    desc_act-style g_idx."""
    import torch

    config = json.load(open(os.path.join(float_dir, "config.json")))
    tensors = _load_dir(float_dir)
    rng = np.random.default_rng(seed)
    out, names = {}, []
    for k, v in tensors.items():
        if not _is_quantized_linear(k, v):
            out[k] = v
            continue
        name = k[: -len(".weight")]
        w = v.float().numpy()
        n_out, n_in = w.shape
        if method == "gptq":
            g_idx = act_order_g_idx(n_in, group_size, rng) if act_order else None
            q, s, z = rtn(w, bits, group_size, sym, g_idx)
            if g_idx is None:
                g_idx = np.arange(n_in) // (group_size or n_in)
            if version == 1:
                z = np.maximum(z, 1)  # v1 cannot store 0; re-round the few groups affected
                q = np.clip(np.round(w / s[:, g_idx]) + z[:, g_idx], 0, 2 ** bits - 1).astype(np.int64)
            packed = pack_gptq(q, z, s, g_idx, bits, version)
        elif method == "awq":
            assert bits == 4 and not act_order
            q, s, z = rtn(w, 4, group_size, False, grid="awq")
            packed = pack_awq(q, z, s, "gemm")
        else:
            raise ValueError(f"method {method!r}")
        for p, t in packed.items():
            out[f"{name}.{p}"] = torch.from_numpy(np.ascontiguousarray(t))
        names.append(name)
    if method == "gptq":
        qc = {
            "bits": bits,
            "group_size": group_size or -1,
            "desc_act": bool(act_order),
            "sym": bool(sym),
            "true_sequential": True,
            "static_groups": False,
            "damp_percent": 0.01,
            "quant_method": "gptq",
            "checkpoint_format": "gptq" if version == 1 else "gptq_v2",
        }
    else:
        qc = {
            "quant_method": "awq",
            "zero_point": True,
            "group_size": group_size or -1,
            "bits": 4,
            "version": "gemm",
            "modules_to_not_convert": None,
        }
    config["quantization_config"] = qc
    _save(out, out_dir, config)
    if method == "gptq":
        with open(os.path.join(out_dir, "quantize_config.json"), "w") as f:
            json.dump(qc, f, indent=2)
    _copy_other_files(float_dir, out_dir)
    return sorted(names)


def _main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dequantize")
    d.add_argument("src")
    d.add_argument("out")
    d.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p = sub.add_parser("pack")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--method", choices=["gptq", "awq"], default="gptq")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128, help="-1: one group per output channel")
    p.add_argument("--asym", action="store_true")
    p.add_argument("--version", type=int, choices=[1, 2], default=1)
    p.add_argument("--act-order", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "dequantize":
        print("\n".join(dequantize_dir(a.src, a.out, a.dtype)))
    else:
        gs = a.group_size if a.group_size > 0 else None
        print("\n".join(pack_dir(a.src, a.out, a.method, a.bits, gs, not a.asym, a.version, a.act_order, a.seed)))


if __name__ == "__main__":
    _main()
