"""GPTQ and AWQ reference fixtures for kiln-quant (tests/fixtures/quant/).

Plain NumPy (float64) versions of both algorithms, written from the papers and the reference
implementations' descriptions (GPTQ: Frantar et al. 2022 and IST-DASLab/gptq `fasterquant`;
AWQ: Lin et al. 2023 and AutoAWQ `_search_best_scale` / `_search_best_clip`), with kiln's
conventions (crates/kiln-quant/src/int.rs):

- the grid of a group: the range always contains 0, symmetric takes +-max|.|, an all-zero group
  uses [-1, 1]; scale = (hi - lo) / maxq rounded to f16 *before* the weights are rounded to it;
  zero = round(-lo / scale) (symmetric: 2^(bits-1)); q = clamp(round(w / scale) + zero, 0, maxq);
  rounding half to even; the grid arithmetic in float32 on the float32 value of each weight;
- everything else (Hessian, error propagation, losses) in float64.

The GPTQ loop is the reference's, matrix-wide and column by column (`W1` working copy per lazy
batch, groups fit on `W` at the batch start, `W[:, i2:] -= Err1 @ U[i1:i2, i2:]`), and U comes
from the reference's three steps (Cholesky, cholesky_inverse, upper Cholesky), whereas kiln
computes rows independently and U in two steps: the fixture checks one against the other.
AWQ errors are computed directly from the outputs `X Dᵀ`, kiln's from the Gram matrix.

Files (safetensors; q packed two 4-bit values a byte, low nibble first, to stay small):
  gptq.safetensors  x (256, 256) f16 with correlated columns and dead columns 7, 100, 201 (the
                    Hessian is added in two batches, rows 0..100 and 100..256); w (96, 256) f16;
                    per case `<case>.q` (96, 128) u8 packed, `.scales` f32, `.zeros` u8,
                    `.g_idx` i32 (act-order without static groups), `.loss` f64; the metadata
                    lists the cases and their settings.
  awq.safetensors   x (256, 128) f16 with salient channels; w1 (64, 128), w2 (48, 128) f16;
                    `<case>.scales` f32, `.ratio` f32, `.loss` f64, `.losses` f64 (every
                    candidate); `<clip case>.max_vals` f32 (rows, n_groups).

Run: /work/refvenv/bin/python tools/make_quant_fixtures.py
"""

import os

import numpy as np
from safetensors.numpy import save_file

F32 = np.float32
F64 = np.float64
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant")


# ---------------------------------------------------------------- the grid (int.rs)


def grid(x, bits, sym):
    """Scale and zero point (float32 arrays) per row of the float32 matrix x."""
    assert x.dtype == F32
    maxq = F32(2**bits - 1)
    lo = np.minimum(x.min(1), F32(0))
    hi = np.maximum(x.max(1), F32(0))
    if sym:
        hi = np.maximum(-lo, hi)
        lo = np.where(lo < 0, -hi, lo)
    both = (lo == 0) & (hi == 0)
    lo = np.where(both, F32(-1), lo)
    hi = np.where(both, F32(1), hi)
    scale = np.maximum((hi - lo) / maxq, np.finfo(F32).tiny).astype(F32)
    scale = scale.astype(np.float16).astype(F32)
    if sym:
        zero = np.full_like(scale, F32((2**bits) / 2))
    else:
        zero = np.clip(np.round(-lo / scale), F32(0), maxq).astype(F32)
    return scale, zero


def quantize(x, scale, zero, bits):
    """Integers and dequantized float32 values of the float32 x on a grid (broadcast)."""
    assert x.dtype == F32 and scale.dtype == F32
    q = np.clip(np.round(x / scale) + zero, F32(0), F32(2**bits - 1)).astype(F32)
    return q, (scale * (q - zero)).astype(F32)


def fake_quant(w, group, bits, sym):
    """Quantize-dequantize the float32 (rows, cols) w per (row, group)."""
    rows, cols = w.shape
    g = w.reshape(-1, group)
    scale, zero = grid(g, bits, sym)
    return quantize(g, scale[:, None], zero[:, None], bits)[1].reshape(rows, cols)


# ---------------------------------------------------------------- GPTQ


def hessian(batches):
    """The reference's running H = 2/n sum x^T x (n counts rows here)."""
    cols = batches[0].shape[1]
    h = np.zeros((cols, cols))
    n = 0
    for x in batches:
        x = x.astype(F64)
        t = x.shape[0]
        h *= n / (n + t)
        n += t
        h += (2.0 / n) * (x.T @ x)
    return h


def gptq(w32, h, bits, group, sym, block, act_order, static_groups, damp_percent=0.01):
    rows, cols = w32.shape
    w = w32.astype(F64)
    pc = grid(w32, bits, sym) if group is None else None
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    groups = None
    if group is not None and static_groups:
        groups = [grid(w[:, i : i + group].astype(F32), bits, sym) for i in range(0, cols, group)]
    perm = np.arange(cols)
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        w = w[:, perm]
        h = h[perm][:, perm]
    h[np.diag_indices(cols)] += damp_percent * np.mean(np.diag(h))
    l = np.linalg.cholesky(h)
    li = np.linalg.inv(l)
    u = np.linalg.cholesky(li.T @ li).T

    q = np.zeros((rows, cols), dtype=np.int64)
    losses = np.zeros((rows, cols))
    cur = pc
    dyn = []
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros((rows, i2 - i1))
        for i in range(i2 - i1):
            c = i1 + i
            if group is not None:
                if groups is None:
                    if c % group == 0:
                        cur = grid(w[:, c : c + group].astype(F32), bits, sym)
                        dyn.append(cur)
                else:
                    cur = groups[perm[c] // group]
            col = w1[:, i]
            qi, dq = quantize(col.astype(F32), cur[0], cur[1], bits)
            q[:, c] = qi.astype(np.int64)
            d = u[c, c]
            dq = dq.astype(F64)
            losses[:, c] = (col - dq) ** 2 / d**2 / 2
            e = (col - dq) / d
            w1[:, i:] -= np.outer(e, u[c, c:i2])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]

    out = np.zeros_like(q)
    out[:, perm] = q
    params = [pc] if group is None else (groups if groups is not None else dyn)
    scales = np.stack([p[0] for p in params], 1).astype(F32)
    zeros = np.stack([p[1] for p in params], 1).astype(np.uint8)
    g_idx = None
    if act_order and group is not None and groups is None:
        g_idx = np.zeros(cols, dtype=np.int32)
        g_idx[perm] = np.arange(cols) // group
    return out.astype(np.uint8), scales, zeros, g_idx, float(losses.sum())


def pack4(q):
    assert q.max() < 16 and q.shape[1] % 2 == 0
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


GPTQ_CASES = [
    # name, bits, group, sym, block, act_order, static_groups
    ("g64", 4, 64, False, 128, False, False),
    ("g64_act_static", 4, 64, False, 128, True, True),
    ("g64_act", 4, 64, False, 128, True, False),
    ("channel_sym", 4, None, True, 128, False, False),
    ("b3_g32", 3, 32, False, 128, False, False),
    ("g64_block24", 4, 64, False, 24, False, False),
    ("g32_sym_act_block48", 4, 32, True, 48, True, False),
]


def make_gptq(rng):
    n, cols, rows = 256, 256, 96
    z = rng.standard_normal((n, 24))
    x = 0.4 * (z @ rng.standard_normal((24, cols))) + 0.5 * rng.standard_normal((n, cols))
    x *= np.exp(rng.normal(0.0, 0.7, cols))  # uneven diag(H): act-order matters
    x[:, [7, 100, 201]] = 0.0
    x = x.astype(np.float16)
    w = 0.02 * rng.standard_normal((rows, cols))
    w[rng.random(w.shape) < 0.01] *= 8.0  # a few outliers
    w = w.astype(np.float16)
    x32, w32 = x.astype(F32), w.astype(F32)
    h = hessian([x32[:100], x32[100:]])

    tensors = {"x": x, "w": w}
    meta = {"cases": ",".join(c[0] for c in GPTQ_CASES)}
    for name, bits, group, sym, block, act, static in GPTQ_CASES:
        q, scales, zeros, g_idx, loss = gptq(w32, h, bits, group, sym, block, act, static)
        tensors[f"{name}.q"] = pack4(q)
        tensors[f"{name}.scales"] = scales
        tensors[f"{name}.zeros"] = zeros
        tensors[f"{name}.loss"] = np.array([loss], dtype=F64)
        if g_idx is not None:
            tensors[f"{name}.g_idx"] = g_idx
        meta[name] = (
            f"bits={bits},group={group or 0},sym={int(sym)},block={block},"
            f"act_order={int(act)},static_groups={int(static)}"
        )
        # Output error against round-to-nearest (the Rust test checks GPTQ wins).
        gi = g_idx if g_idx is not None else np.arange(cols) // (group or cols)
        dq = scales[:, gi] * (q.astype(F32) - zeros[:, gi])
        e_gptq = np.sum((x32.astype(F64) @ (dq.astype(F64) - w32).T) ** 2)
        print(f"gptq {name:22} loss {loss:.6f}  ||X(Wq-W)^T||^2 {e_gptq:.4f}")
    save_file(tensors, os.path.join(OUT, "gptq.safetensors"), metadata=meta)


# ---------------------------------------------------------------- AWQ


def search_scales(x32, ws, bits, group, sym, n_grid=20, duo=True):
    x = x32.astype(F64)
    x_mean = np.abs(x).mean(0)
    wc = np.concatenate(ws)
    g = np.abs(wc.reshape(-1, group))
    w_mean = (g.astype(F64) / (g.max(1, keepdims=True).astype(F64) + 1e-6)).reshape(wc.shape).mean(0)
    rows = sum(w.shape[0] for w in ws)
    losses, cands = [], []
    for k in range(n_grid):
        r = k / n_grid
        s = x_mean**r / (w_mean ** (1 - r) + 1e-4) if duo else x_mean**r
        s = np.maximum(s, 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        s[~np.isfinite(s)] = 1.0
        s32 = s.astype(F32)
        sq = 0.0
        for w in ws:
            wq = (fake_quant(w * s32, group, bits, sym) / s32).astype(F32)
            d = (wq - w).astype(F64)
            sq += np.sum((x @ d.T) ** 2)
        losses.append(sq / (x.shape[0] * rows))
        cands.append(s32)
    best = int(np.argmin(losses))  # the first lowest
    second = min(v for i, v in enumerate(losses) if i != best)
    print(f"awq scales: ratio {best / n_grid}, loss {losses[best]:.6g}, "
          f"runner-up gap {(second - losses[best]) / losses[best]:.2e} (relative)")
    return cands[best], F32(best) / F32(n_grid), losses[best], np.array(losses)


def search_clip(x32, w, bits, group, sym, n_grid=20, max_shrink=0.5, clip_tokens=512):
    n, cols = x32.shape
    rows = w.shape[0]
    ng = cols // group
    xs = x32[:: max(1, n // clip_tokens)].astype(F64).reshape(-1, ng, group)
    wg = w.reshape(rows, ng, group)
    org = np.abs(wg).max(-1)
    best = org.copy()
    min_err = np.full((rows, ng), np.inf)
    errs = []
    for i in range(int(max_shrink * n_grid)):
        mv = (org.astype(F64) * (1 - i / n_grid)).astype(F32)
        cw = np.clip(wg, -mv[..., None], mv[..., None]).astype(F32)
        dq = fake_quant(cw.reshape(rows, cols), group, bits, sym).reshape(rows, ng, group)
        d = dq.astype(F64) - wg.astype(F64)
        out = np.einsum("tgc,rgc->rtg", xs, d)  # (rows, tokens, groups)
        err = (out**2).mean(1)
        errs.append(err)
        upd = err < min_err
        min_err[upd] = err[upd]
        best[upd] = mv[upd]
    e = np.stack(errs)  # (shrinks, rows, groups)
    gaps = [((e[:, r, g][e[:, r, g] != min_err[r, g]].min() - min_err[r, g]) / min_err[r, g])
            for r in range(rows) for g in range(ng) if (e[:, r, g] != min_err[r, g]).any()]
    print(f"awq clip: {len(xs)} tokens, smallest runner-up gap {min(gaps):.2e} (relative), "
          f"{np.mean(best < org):.0%} of groups clipped")
    return best


def make_awq(rng):
    n, cols = 256, 128
    z = rng.standard_normal((n, 16))
    x = 0.3 * (z @ rng.standard_normal((16, cols))) + 0.5 * rng.standard_normal((n, cols))
    x[:, [5, 37, 64, 99, 120]] *= np.array([10.0, 20.0, 30.0, 50.0, 15.0])
    x = x.astype(np.float16)
    w1 = (0.05 * rng.standard_normal((64, cols))).astype(np.float16)
    w2 = (0.05 * rng.standard_normal((48, cols))).astype(np.float16)
    x32, w1_32, w2_32 = x.astype(F32), w1.astype(F32), w2.astype(F32)
    tensors = {"x": x, "w1": w1, "w2": w2}
    for name, duo in [("duo", True), ("x_only", False)]:
        s, ratio, loss, losses = search_scales(x32, [w1_32, w2_32], 4, 32, False, duo=duo)
        tensors[f"{name}.scales"] = s
        tensors[f"{name}.ratio"] = np.array([ratio], dtype=F32)
        tensors[f"{name}.loss"] = np.array([loss], dtype=F64)
        tensors[f"{name}.losses"] = losses
    # Clip as AWQ runs it: on the scaled weights with the inversely scaled input.
    s = tensors["duo.scales"]
    tensors["clip_w1.max_vals"] = search_clip((x32 / s).astype(F32), (w1_32 * s).astype(F32),
                                              4, 32, False, clip_tokens=100)
    tensors["clip_w2_sym.max_vals"] = search_clip(x32, w2_32, 4, 32, True)
    meta = {
        "duo": "duo_scaling=1 (w1, w2; 4-bit g32 asym)",
        "x_only": "duo_scaling=0 (w1, w2; 4-bit g32 asym)",
        "clip_w1": "w1 * duo.scales, x / duo.scales; 4-bit g32 asym, clip_tokens 100",
        "clip_w2_sym": "w2, x; 4-bit g32 sym, clip_tokens 512",
    }
    save_file(tensors, os.path.join(OUT, "awq.safetensors"), metadata=meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    make_gptq(np.random.default_rng(20260101))
    make_awq(np.random.default_rng(20260102))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")


if __name__ == "__main__":
    main()
