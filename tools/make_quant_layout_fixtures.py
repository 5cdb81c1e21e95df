"""Writes tests/fixtures/quant_layouts/*.safetensors: random quantized matrices and their GPTQ/AWQ
packed tensors, made by tools/quant_layouts.py (the independent numpy implementation of the
published layouts). crates/kiln-quant/tests/layouts.rs checks kiln's pack/unpack against them.

Each file holds one case:
  q        uint8 (out, in)        the integers          (kiln's IntMatrix.q)
  zeros    uint8 (out, n_groups)  the zero points       (IntMatrix.zeros)
  scales   f32   (out, n_groups)  f16-valued scales     (IntMatrix.scales)
  groups   int32 (in,)            group of each column  (IntMatrix.group_of)
  qweight, qzeros int32, packed_scales f16 (and for GPTQ packed_g_idx int32): the checkpoint tensors
and in its metadata key "case" (`k=v;k=v`, sorted): act_order, bits, group_size (-1: per
channel), method, sym, version (GPTQ 1/2 or AWQ gemm/gemv).

Run: /work/refvenv/bin/python tools/make_quant_layout_fixtures.py  (deterministic, ~2 s)
"""

import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_layouts as ql  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant_layouts")


def random_case(rng, n_out, n_in, bits, group_size, sym, zero_lo, act_order):
    maxq = 2 ** bits - 1
    gs = group_size or n_in
    n_groups = n_in // gs
    q = rng.integers(0, maxq + 1, size=(n_out, n_in))
    q[0, 0], q[0, 1] = 0, maxq  # both ends of the range, always
    if sym:
        zeros = np.full((n_out, n_groups), (maxq + 1) // 2)
    else:
        zeros = rng.integers(zero_lo, maxq + 1, size=(n_out, n_groups))
        zeros.flat[0], zeros.flat[-1] = zero_lo, maxq
    scales = rng.uniform(1e-3, 0.2, size=(n_out, n_groups)).astype(np.float16).astype(np.float32)
    groups = ql.act_order_g_idx(n_in, group_size, rng) if act_order else np.arange(n_in) // gs
    return q, zeros, scales, groups


def write(name, q, zeros, scales, groups, packed, meta):
    tensors = {
        "q": q.astype(np.uint8),
        "zeros": zeros.astype(np.uint8),
        "scales": scales.astype(np.float32),
        "groups": groups.astype(np.int32),
        "qweight": packed["qweight"],
        "qzeros": packed["qzeros"],
        "packed_scales": packed["scales"],
    }
    if "g_idx" in packed:
        tensors["packed_g_idx"] = packed["g_idx"]
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(OUT, f"{name}.safetensors"),
              # One key: safetensors writes a metadata map in hash order, so several keys would
              # make the files differ from run to run.
              metadata={"case": ";".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                         for k, v in sorted(meta.items()))})


def expected_w(q, zeros, scales, groups):
    return scales[:, groups] * (q - zeros[:, groups]).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(OUT, f))
    rng = np.random.default_rng(20261201)
    n = 0
    gptq_cases = [(v, b, s, a, 16) for v in (1, 2) for b in ql.GPTQ_BITS for s in (True, False) for a in (False, True)]
    gptq_cases += [(2, 4, False, False, None), (1, 3, False, True, 32)]
    for version, bits, sym, act, gs in gptq_cases:
        n_out, n_in = 32, 64
        q, zeros, scales, groups = random_case(rng, n_out, n_in, bits, gs, sym, 1 if version == 1 else 0, act)
        packed = ql.pack_gptq(q, zeros, scales, groups, bits, version)
        # The numpy reader inverts the numpy writer.
        q2, z2 = ql.unpack_gptq_ints(packed["qweight"], packed["qzeros"], bits, version)
        assert (q2 == q).all() and (z2 == zeros).all()
        w = ql.unpack_gptq(packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"], bits, version)
        assert (w == expected_w(q, zeros, scales, groups)).all()
        name = f"gptq_v{version}_b{bits}_{'sym' if sym else 'asym'}_{'act' if act else 'seq'}_g{gs or -1}"
        write(name, q, zeros, scales, groups, packed,
              dict(method="gptq", bits=bits, group_size=gs or -1, sym=sym, version=version, act_order=act))
        n += 1
    for version, n_out, n_in, gs in [("gemm", 32, 128, 32), ("gemm", 16, 64, None),
                                     ("gemv", 16, 128, 32), ("gemv", 8, 256, 128)]:
        q, zeros, scales, groups = random_case(rng, n_out, n_in, 4, gs, False, 0, False)
        packed = ql.pack_awq(q, zeros, scales, version)
        q2, z2 = ql.unpack_awq_ints(packed["qweight"], packed["qzeros"], version, gs)
        assert (q2 == q).all() and (z2 == zeros).all()
        w = ql.unpack_awq(packed["qweight"], packed["qzeros"], packed["scales"], version, gs)
        assert (w == expected_w(q, zeros, scales, groups)).all()
        write(f"awq_{version}_g{gs or -1}", q, zeros, scales, groups, packed,
              dict(method="awq", bits=4, group_size=gs or -1, sym=False, version=version, act_order=False))
        n += 1
    # The published v1 quirk: a zero point of 0 cannot be written.
    try:
        ql.pack_gptq(np.zeros((32, 32)), np.zeros((32, 1)), np.ones((32, 1)), np.zeros(32), 4, 1)
        raise AssertionError("v1 accepted a zero point of 0")
    except ValueError:
        pass
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{n} cases, {total} bytes in {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
