//! Scaled dot-product attention over packed rows, for one sequence.
//!
//! Layout: `q` is `(n_q, n_heads, head_dim)`, `k`/`v` are `(n_kv, n_kv_heads, head_dim)`, output
//! `(n_q, n_heads, head_dim)`. Query `i` sits at absolute position `q_start + i`; key `j` at
//! position `j`. Grouped-query attention maps head `h` to kv head `h / (n_heads / n_kv_heads)`.
//!
//! Two paths: a direct loop for a few queries (decode), and for prompts a blocked path that per
//! (head, block of 64 queries) computes `S = Q Kᵀ` and `O = P V` with gemm over only the keys that
//! block can see — memory is O(block × n_kv), never O(n_q × n_kv) for the whole prompt.
//! The decode path lives in `decode.rs` (with its portable kernel), `decode_avx2.rs` and
//! `decode_avx512.rs`.
//! `reference_attention` is the naive definition the tests hold both paths to.

use rayon::prelude::*;

use super::decode::{decode, Contiguous};
use super::matmul::gemm_f32;
use super::softmax::softmax_in_place;

#[derive(Debug, Clone, Copy)]
pub struct AttnParams<'a> {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    /// Sliding window: a query at position p sees keys p-window+1 ..= p.
    pub window: Option<usize>,
    /// ALiBi: per-head slopes, adding `slope * (j - p)` to each score.
    pub alibi_slopes: Option<&'a [f32]>,
    /// A learned additive bias per head and relative distance (T5's bucketed positions).
    pub rel_bias: Option<RelativeBias<'a>>,
}

/// An additive per-head score bias that depends only on `j - p`, the key's position minus the
/// query's: `values[h * n_rel + (j - p - min_rel)]`. The caller looks T5's buckets up once per
/// step for the distances the step can meet, so the kernel only indexes (no bucket math per
/// score). Invariant: every visible `(p, j)` has `min_rel <= j - p < min_rel + n_rel`.
#[derive(Debug, Clone, Copy)]
pub struct RelativeBias<'a> {
    pub values: &'a [f32],
    pub min_rel: isize,
    pub n_rel: usize,
}

impl RelativeBias<'_> {
    #[inline]
    pub fn at(&self, h: usize, p: usize, j: usize) -> f32 {
        let r = (j as isize - p as isize - self.min_rel) as usize;
        debug_assert!(r < self.n_rel, "relative bias: distance outside the table");
        self.values[h * self.n_rel + r]
    }
}

impl AttnParams<'_> {
    /// The additive score bias (ALiBi and/or relative) of head `h`, query position `p`, key `j`.
    #[inline]
    pub(crate) fn bias(&self, h: usize, p: usize, j: usize) -> f32 {
        let a = self
            .alibi_slopes
            .map_or(0.0, |sl| sl[h] * (j as f32 - p as f32));
        a + self.rel_bias.map_or(0.0, |rb| rb.at(h, p, j))
    }

    /// The key range `[lo, hi)` visible to a query at absolute position `p`.
    pub(crate) fn visible(&self, p: usize, n_kv: usize) -> (usize, usize) {
        let hi = if self.causal { (p + 1).min(n_kv) } else { n_kv };
        let lo = match self.window {
            Some(w) => (p + 1).saturating_sub(w),
            None => 0,
        };
        (lo.min(hi), hi)
    }
}

const BLOCK_Q: usize = 64;
/// The blocked path's smallest key count (see `prefill`).
const MIN_KEYS: usize = 16;

/// Up to this many queries take the decode path (per-query dot products); more take the blocked
/// gemm path.
pub const DECODE_MAX_QUERIES: usize = 4;

pub fn attention(q: &[f32], k: &[f32], v: &[f32], q_start: usize, p: &AttnParams, out: &mut [f32]) {
    attention_path(q, k, v, q_start, p, false, out)
}

/// [`attention`] through the blocked (prompt) path whatever the number of queries.
///
/// Each query row of the blocked path gets the same bits however the queries are split into
/// calls (a row's scores, softmax and weighted sum do not depend on the other rows); the decode
/// path's rows differ from them in the last bits. A serving engine that prefills a prompt in
/// chunks uses this for short chunks, so every prompt row is computed as in a one-shot prefill
/// and a request's output does not depend on how the scheduler cut its prompt.
pub fn attention_blocked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_start: usize,
    p: &AttnParams,
    out: &mut [f32],
) {
    attention_path(q, k, v, q_start, p, true, out)
}

fn attention_path(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_start: usize,
    p: &AttnParams,
    blocked: bool,
    out: &mut [f32],
) {
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let n_q = q.len() / (nh * hd);
    let n_kv = k.len() / (nkv * hd);
    assert!(
        nh % nkv == 0,
        "attention: n_heads must be a multiple of n_kv_heads"
    );
    assert_eq!(out.len(), q.len(), "attention: output size");
    if n_q <= DECODE_MAX_QUERIES && !blocked {
        let src = Contiguous {
            k,
            v,
            kv_stride: nkv * hd,
            head_dim: hd,
        };
        decode(q, &src, n_kv, q_start, p, out);
    } else {
        prefill(q, k, v, q_start, p, n_q, n_kv, out);
    }
}

#[allow(clippy::too_many_arguments)]
fn prefill(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_start: usize,
    p: &AttnParams,
    n_q: usize,
    n_kv: usize,
    out: &mut [f32],
) {
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let group = nh / nkv;
    let (q_stride, kv_stride) = (nh * hd, nkv * hd);
    let n_blocks = n_q.div_ceil(BLOCK_Q);
    let tasks: Vec<(usize, usize)> = (0..nh)
        .flat_map(|h| (0..n_blocks).map(move |b| (h, b)))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(h, b)| {
            let kh = h / group;
            let i0 = b * BLOCK_Q;
            let rows = BLOCK_Q.min(n_q - i0);
            // Keys any query of the block can see.
            let lo = p.visible(q_start + i0, n_kv).0;
            let hi = p.visible(q_start + i0 + rows - 1, n_kv).1.max(lo);
            let nk = hi - lo;
            // A short block is padded to BLOCK_Q rows of zeros: gemm picks its kernels by the
            // row count, and a row must get the same bits in a short block (a chunk of a
            // prompt) as in a full one (the same prompt in one pass) — batch invariance.
            let padded: Vec<f32>;
            let (q_blk, q_ld) = if rows < BLOCK_Q {
                let mut buf = vec![0.0f32; BLOCK_Q * hd];
                for r in 0..rows {
                    let src = (i0 + r) * q_stride + h * hd;
                    buf[r * hd..(r + 1) * hd].copy_from_slice(&q[src..src + hd]);
                }
                padded = buf;
                (&padded[..], hd)
            } else {
                (&q[i0 * q_stride + h * hd..], q_stride)
            };
            // Likewise fewer than MIN_KEYS keys are padded with zero rows (the first rows of a
            // prompt chunk; gemm takes other kernels for tiny dimensions).
            let kv_pad: Vec<f32>;
            let (k_blk, v_blk, kv_ld, nk) = if nk < MIN_KEYS {
                let mut buf = vec![0.0f32; 2 * MIN_KEYS * hd];
                for j in 0..nk {
                    let src = (lo + j) * kv_stride + kh * hd;
                    buf[j * hd..(j + 1) * hd].copy_from_slice(&k[src..src + hd]);
                    let dst = (MIN_KEYS + j) * hd;
                    buf[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
                kv_pad = buf;
                let (kb, vb) = kv_pad.split_at(MIN_KEYS * hd);
                (kb, vb, hd, MIN_KEYS)
            } else {
                (
                    &k[lo * kv_stride + kh * hd..],
                    &v[lo * kv_stride + kh * hd..],
                    kv_stride,
                    nk,
                )
            };
            let mut s = vec![0.0f32; BLOCK_Q * nk];
            // S (BLOCK_Q, nk) = Q_blk (BLOCK_Q, hd) · K_hᵀ (hd, nk); rows past `rows` unused.
            gemm_f32(
                BLOCK_Q, nk, hd, q_blk, q_ld, 1, k_blk, 1, kv_ld, &mut s, false,
            );
            // Padding rows of P are zero (their outputs are dropped).
            s[rows * nk..].fill(0.0);
            for r in 0..rows {
                let pos = q_start + i0 + r;
                let (vlo, vhi) = p.visible(pos, n_kv);
                let row = &mut s[r * nk..(r + 1) * nk];
                // Softmax over exactly the visible keys, the rest zero: the sums then run over the
                // same values in the same order whatever other rows widened the block's key range.
                let (a, b) = (vlo.max(lo) - lo, vhi.max(vlo.max(lo)) - lo);
                for (jj, x) in row[a..b].iter_mut().enumerate() {
                    *x = *x * p.scale + p.bias(h, pos, lo + a + jj);
                }
                row[..a].fill(0.0);
                row[b..].fill(0.0);
                if b > a {
                    softmax_in_place(&mut row[a..b]);
                }
            }
            // O_blk (BLOCK_Q, hd) = P (BLOCK_Q, nk) · V_h (nk, hd)
            let mut o = vec![0.0f32; BLOCK_Q * hd];
            gemm_f32(BLOCK_Q, hd, nk, &s, nk, 1, v_blk, kv_ld, 1, &mut o, false);
            o.truncate(rows * hd);
            o
        })
        .collect();
    for (&(h, b), o) in tasks.iter().zip(results) {
        for (r, row) in o.chunks(hd).enumerate() {
            let i = b * BLOCK_Q + r;
            out[(i * nh + h) * hd..(i * nh + h + 1) * hd].copy_from_slice(row);
        }
    }
}

/// The definition, computed in f64, for tests.
pub fn reference_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_start: usize,
    p: &AttnParams,
) -> Vec<f32> {
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let n_q = q.len() / (nh * hd);
    let n_kv = k.len() / (nkv * hd);
    let mut out = vec![0.0f32; q.len()];
    for i in 0..n_q {
        let pos = q_start + i;
        for h in 0..nh {
            let kh = h / (nh / nkv);
            let mut scores = vec![f64::NEG_INFINITY; n_kv];
            for (j, sc) in scores.iter_mut().enumerate() {
                let visible = (!p.causal || j <= pos) && p.window.is_none_or(|w| j + w > pos);
                if visible {
                    let mut s = 0.0f64;
                    for d in 0..hd {
                        s += q[(i * nh + h) * hd + d] as f64 * k[(j * nkv + kh) * hd + d] as f64;
                    }
                    *sc = s * p.scale as f64
                        + p.alibi_slopes
                            .map_or(0.0, |sl| sl[h] as f64 * (j as f64 - pos as f64))
                        + p.rel_bias.map_or(0.0, |rb| {
                            rb.values
                                [h * rb.n_rel + (j as isize - pos as isize - rb.min_rel) as usize]
                                as f64
                        });
                }
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                continue;
            }
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = w.iter().sum();
            for d in 0..hd {
                let mut acc = 0.0;
                for j in 0..n_kv {
                    acc += w[j] / z * v[(j * nkv + kh) * hd + d] as f64;
                }
                out[(i * nh + h) * hd + d] = acc as f32;
            }
        }
    }
    out
}
