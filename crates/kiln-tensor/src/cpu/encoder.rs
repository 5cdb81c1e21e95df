//! Kernels for encoder-only models (BERT family) over packed variable-length sequences: in-place
//! and allocation-free, because an encoder's forward pass is nothing but these and gemm.
//!
//! - [`attention_varlen`]: bidirectional attention where each sequence of a packed batch attends
//!   only to itself (no padding, no mask tensor), parallel over sequences.
//! - [`gelu_erf_in_place`]: exact-erf GELU (`activation::gelu_erf`, a rational f32 erf with
//!   abs. error < 1e-6), vectorised and parallel over rows.
//! - [`add_layer_norm_in_place`]: post-norm residual `x = LayerNorm(x + y)` in one pass.
//!
//! Each loop is written once (`#[inline(always)]`) and compiled twice: as is, and inside an
//! `avx2,fma` target-feature function chosen at run time, since the crate targets baseline x86-64.

use rayon::prelude::*;

/// `x[i] = gelu(x[i])` over a `(rows, cols)` buffer, parallel over blocks of rows.
pub fn gelu_erf_in_place(x: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    x.par_chunks_mut(cols * 16).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { x86::gelu(c) };
        }
        gelu_slice(c)
    });
}

#[inline(always)]
fn gelu_slice(c: &mut [f32]) {
    c.iter_mut()
        .for_each(|v| *v = super::activation::gelu_erf(*v));
}

/// `x = LayerNorm(x + y)` row by row (`cols` = width), with `y` used as scratch.
pub fn add_layer_norm_in_place(
    x: &mut [f32],
    y: &mut [f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
) {
    let cols = w.len();
    if cols == 0 {
        return;
    }
    x.par_chunks_mut(cols * 8)
        .zip(y.par_chunks_mut(cols * 8))
        .for_each(|(xr, yr)| {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                return unsafe { x86::add_layer_norm(xr, yr, w, b, eps) };
            }
            add_layer_norm_rows(xr, yr, w, b, eps)
        });
}

/// Rows of `x = LayerNorm(x + y)`, mean and variance over eight accumulators (so LLVM
/// vectorises them) in two passes as `layer_norm_row` does.
#[inline(always)]
fn add_layer_norm_rows(x: &mut [f32], y: &mut [f32], w: &[f32], b: Option<&[f32]>, eps: f32) {
    let cols = w.len();
    for (xr, yr) in x.chunks_exact_mut(cols).zip(y.chunks_exact_mut(cols)) {
        for (a, &c) in yr.iter_mut().zip(xr.iter()) {
            *a += c;
        }
        let mean = sum8(yr, |v| v) / cols as f32;
        let var = sum8(yr, |v| (v - mean) * (v - mean)) / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        match b {
            Some(b) => {
                for (((o, &v), &wi), &bi) in xr.iter_mut().zip(yr.iter()).zip(w).zip(b) {
                    *o = (v - mean) * inv * wi + bi;
                }
            }
            None => {
                for ((o, &v), &wi) in xr.iter_mut().zip(yr.iter()).zip(w) {
                    *o = (v - mean) * inv * wi;
                }
            }
        }
    }
}

#[inline(always)]
fn sum8(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// The same loops compiled for AVX2+FMA (the crate is built for baseline x86-64).
#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu(c: &mut [f32]) {
        super::gelu_slice(c)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn add_layer_norm(
        x: &mut [f32],
        y: &mut [f32],
        w: &[f32],
        b: Option<&[f32]>,
        eps: f32,
    ) {
        super::add_layer_norm_rows(x, y, w, b, eps)
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        start: usize,
        len: usize,
        n_heads: usize,
        head_dim: usize,
        scale: f32,
        o: &mut [f32],
    ) {
        super::attend_one(q, k, v, start, len, n_heads, head_dim, scale, o)
    }
}

/// Bidirectional multi-head attention over a packed batch: rows `start..start + len` of `q`, `k`,
/// `v` (each `(n_tokens, n_heads, head_dim)`) form one sequence, which sees all of its own keys
/// and none of the others'. Writes `out (n_tokens, n_heads, head_dim)`.
///
/// Parallel over sequences (a batch of short sentences is dozens of independent tasks); the
/// inner loops are plain dot/axpy, since for sentence-length sequences the score matrices are
/// too small for gemm's packing to pay off.
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[(usize, usize)],
    n_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let row = n_heads * head_dim;
    assert!(
        q.len() == k.len() && k.len() == v.len() && out.len() == q.len(),
        "attention_varlen: sizes"
    );
    // Split `out` into one slice per span (spans are disjoint and in order).
    let mut parts: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(spans.len());
    let mut rest: &mut [f32] = out;
    let mut at = 0;
    for &(start, len) in spans {
        assert!(
            start >= at,
            "attention_varlen: spans must be ordered and disjoint"
        );
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((start - at) * row);
        let (mine, tail) = tail.split_at_mut(len * row);
        parts.push((start, len, mine));
        rest = tail;
        at = start + len;
    }
    parts.into_par_iter().for_each(|(start, len, o)| {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { x86::attend(q, k, v, start, len, n_heads, head_dim, scale, o) };
        }
        attend_one(q, k, v, start, len, n_heads, head_dim, scale, o)
    });
}

/// Attention of one sequence (rows `start..start + len`), all heads, into its output rows `o`.
/// Per head, the keys are transposed to `(head_dim, len)` so a query's scores are `head_dim`
/// vector FMAs over all keys at once, rather than `len` short dot products each ending in a
/// horizontal sum (3x slower for sentence-length sequences).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_one(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    len: usize,
    n_heads: usize,
    head_dim: usize,
    scale: f32,
    o: &mut [f32],
) {
    let row = n_heads * head_dim;
    // Keys padded to a multiple of 8 with zeros, so each block of 8 scores is one register.
    let len8 = len.div_ceil(8) * 8;
    let mut scores = vec![0.0f32; len8];
    let mut kt = vec![0.0f32; head_dim * len8]; // (head_dim, len8)
    for h in 0..n_heads {
        for j in 0..len {
            let kj = &k[(start + j) * row + h * head_dim..][..head_dim];
            for (d, &x) in kj.iter().enumerate() {
                kt[d * len8 + j] = x;
            }
        }
        for i in 0..len {
            let qi = &q[(start + i) * row + h * head_dim..][..head_dim];
            // Four accumulators over d: one would be a chain of dependent adds (latency-bound).
            for (jb, block) in scores.chunks_exact_mut(8).enumerate() {
                let mut acc = [[0f32; 8]; 4];
                let mut d = 0;
                while d + 4 <= head_dim {
                    for (u, a) in acc.iter_mut().enumerate() {
                        let (qd, kr) = (qi[d + u], &kt[(d + u) * len8 + jb * 8..][..8]);
                        for l in 0..8 {
                            a[l] += qd * kr[l];
                        }
                    }
                    d += 4;
                }
                for (dd, &qd) in qi.iter().enumerate().skip(d) {
                    let kr = &kt[dd * len8 + jb * 8..][..8];
                    for l in 0..8 {
                        acc[0][l] += qd * kr[l];
                    }
                }
                for l in 0..8 {
                    block[l] = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) * scale;
                }
            }
            let scores = &mut scores[..len];
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            let oi = &mut o[i * row + h * head_dim..][..head_dim];
            // O_i = sum_j p_j V_j, 32 output columns at a time in four independent registers.
            let mut d0 = 0;
            for ob in oi.chunks_exact_mut(32) {
                let mut acc = [[0f32; 8]; 4];
                for (j, &w) in scores.iter().enumerate() {
                    let vj = &v[(start + j) * row + h * head_dim + d0..][..32];
                    for (u, a) in acc.iter_mut().enumerate() {
                        for l in 0..8 {
                            a[l] += w * vj[u * 8 + l];
                        }
                    }
                }
                for (u, a) in acc.iter().enumerate() {
                    for l in 0..8 {
                        ob[u * 8 + l] = a[l] * inv;
                    }
                }
                d0 += 32;
            }
            for d in d0..head_dim {
                oi[d] = scores
                    .iter()
                    .enumerate()
                    .map(|(j, &w)| w * v[(start + j) * row + h * head_dim + d])
                    .sum::<f32>()
                    * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::activation::{erf, gelu_erf};
    use crate::cpu::attention::{reference_attention, AttnParams};

    /// erf by its Taylor series in f64 (converges to 1e-15 on |x| < 6 with enough terms).
    fn erf_series(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while n < 400.0 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    }

    #[test]
    fn erf_matches_the_series_to_1e_6() {
        for i in -4000..4000 {
            let x = i as f32 * 1e-3;
            let want = erf_series(x as f64);
            assert!(
                (erf(x) as f64 - want).abs() < 1e-6,
                "erf({x}) {} {want}",
                erf(x)
            );
            let g = 0.5 * x as f64 * (1.0 + erf_series(x as f64 / std::f64::consts::SQRT_2));
            assert!(
                (gelu_erf(x) as f64 - g).abs() < 1e-6 * (x.abs() as f64).max(1.0),
                "gelu({x})"
            );
        }
        assert!((erf(10.0) - 1.0).abs() < 1e-6 && (erf(-10.0) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn varlen_equals_per_sequence_reference() {
        for hd in [8, 16, 32, 40, 64] {
            varlen_case(3, hd);
        }
    }

    fn varlen_case(nh: usize, hd: usize) {
        let lens = [5usize, 1, 17, 2];
        let n: usize = lens.iter().sum();
        let f = |s: usize| {
            (0..n * nh * hd)
                .map(|i| ((i * 7919 + s * 104729) % 1000) as f32 / 500.0 - 1.0)
                .collect::<Vec<_>>()
        };
        let (q, k, v) = (f(1), f(2), f(3));
        let mut spans = Vec::new();
        let mut at = 0;
        for &l in &lens {
            spans.push((at, l));
            at += l;
        }
        let mut out = vec![0.0; q.len()];
        attention_varlen(&q, &k, &v, &spans, nh, hd, 0.3, &mut out);
        let p = AttnParams {
            n_heads: nh,
            n_kv_heads: nh,
            head_dim: hd,
            scale: 0.3,
            causal: false,
            window: None,
            alibi_slopes: None,
            rel_bias: None,
        };
        let row = nh * hd;
        for &(s, l) in &spans {
            let r = s * row..(s + l) * row;
            let want = reference_attention(&q[r.clone()], &k[r.clone()], &v[r.clone()], 0, &p);
            for (a, b) in out[r].iter().zip(&want) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
}
