//! Scaled dot-product attention over packed rows, for one sequence.
//!
//! Layout: `q` is `(n_q, n_heads, head_dim)`, `k`/`v` are `(n_kv, n_kv_heads, head_dim)`, output
//! `(n_q, n_heads, head_dim)`. Query `i` sits at absolute position `q_start + i`; key `j` at
//! position `j`. Grouped-query attention maps head `h` to kv head `h / (n_heads / n_kv_heads)`.
//!
//! Two paths: a direct loop for a few queries (decode), and for prompts a blocked path that per
//! (head, block of 64 queries) computes `S = Q Kᵀ` and `O = P V` with gemm over only the keys that
//! block can see — memory is O(block × n_kv), never O(n_q × n_kv) for the whole prompt.
//! `reference_attention` is the naive definition the tests hold both paths to.

use rayon::prelude::*;

use super::matmul::gemm_f32;
use super::softmax::softmax_in_place;
use super::vec::{axpy, axpy_portable, dot_portable};

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
    fn bias(&self, h: usize, p: usize, j: usize) -> f32 {
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

/// Keys per decode task: a GQA group's visible keys are split into chunks of this size so two
/// threads stay busy even with few kv heads; chunks are merged with their log-sum-exp.
const DECODE_CHUNK: usize = 128;

/// One (query, kv head, key chunk) piece of decode attention: for every query head of the group,
/// the running max, the softmax denominator and the unnormalised weighted sum of values.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

/// A run of consecutive keys whose rows (of one kv head) are evenly strided in memory: key
/// `c0 + off + t` of the chunk is `rows[t * stride..][..head_dim]` for `t < n`.
pub(crate) struct Run<'s> {
    pub off: usize,
    pub n: usize,
    pub rows: &'s [f32],
    pub stride: usize,
}

/// Where decode reads key and value rows: the contiguous `(n_kv, n_kv_heads, head_dim)` slices
/// here, or a paged block pool (`paged_attention.rs`) whose runs are the pieces of a chunk lying
/// in one block. The kernels loop over runs, so a contiguous chunk is a single run and costs what
/// it did before; a paged chunk is read in place, block by block, without a gather.
pub(crate) trait KvRows: Sync {
    /// Appends to `out`, in key order, the runs covering keys `c0..c1` of kv head `kh` (`values`
    /// picks V rather than K). A source storing rows in another format dequantizes them into
    /// `scratch` and points the runs there; `scratch` comes with stale contents from earlier
    /// chunks (it is reused), so only grow it, never count on zeros.
    fn runs<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        c1: usize,
        values: bool,
        scratch: &'s mut Vec<f32>,
        out: &mut Vec<Run<'s>>,
    );
}

struct Contiguous<'a> {
    k: &'a [f32],
    v: &'a [f32],
    kv_stride: usize,
    head_dim: usize,
}

impl KvRows for Contiguous<'_> {
    fn runs<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        c1: usize,
        values: bool,
        _scratch: &'s mut Vec<f32>,
        out: &mut Vec<Run<'s>>,
    ) {
        let src = if values { self.v } else { self.k };
        let start = c0 * self.kv_stride + kh * self.head_dim;
        let end = (c1 - 1) * self.kv_stride + kh * self.head_dim + self.head_dim;
        out.push(Run {
            off: 0,
            n: c1 - c0,
            rows: &src[start..end],
            stride: self.kv_stride,
        });
    }
}

thread_local! {
    /// Per-thread buffer for rows a `KvRows` source converts (f16, int8), reused across chunks
    /// so that it is allocated and zeroed once, not per chunk.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        // Only if a kernel ever nested inside another on one thread: use a fresh buffer.
        Err(_) => f(&mut Vec::new()),
    })
}

struct Chunk<'a, S> {
    q: &'a [f32],
    src: &'a S,
    q_start: usize,
    p: &'a AttnParams<'a>,
    i: usize,
    kh: usize,
    c0: usize,
    c1: usize,
}

/// Portable chunk kernel (also the AVX2 one's reference in tests).
fn decode_chunk<S: KvRows>(c: &Chunk<S>, scratch: &mut Vec<f32>) -> Partial {
    let (group, hd, n) = (c.p.n_heads / c.p.n_kv_heads, c.p.head_dim, c.c1 - c.c0);
    let mut scores = vec![0.0f32; group * n];
    let mut runs = Vec::new();
    c.src.runs(c.kh, c.c0, c.c1, false, scratch, &mut runs);
    for r in &runs {
        for t in 0..r.n {
            let krow = &r.rows[t * r.stride..][..hd];
            for g in 0..group {
                scores[g * n + r.off + t] = dot_portable(c.q_row(g), krow);
            }
        }
    }
    let mut part = c.softmax_parts(&mut scores);
    drop(runs);
    let mut runs = Vec::new();
    c.src.runs(c.kh, c.c0, c.c1, true, scratch, &mut runs);
    for r in &runs {
        for t in 0..r.n {
            let vrow = &r.rows[t * r.stride..][..hd];
            for g in 0..group {
                axpy_portable(
                    scores[g * n + r.off + t],
                    vrow,
                    &mut part.acc[g * hd..(g + 1) * hd],
                );
            }
        }
    }
    part
}

impl<S> Chunk<'_, S> {
    fn q_row(&self, g: usize) -> &[f32] {
        let (nh, hd) = (self.p.n_heads, self.p.head_dim);
        let h = self.kh * (nh / self.p.n_kv_heads) + g;
        &self.q[(self.i * nh + h) * hd..][..hd]
    }

    /// Scales raw dot products, adds ALiBi, and turns each head's row into unnormalised
    /// probabilities, recording the row max and sum for the merge.
    fn softmax_parts(&self, scores: &mut [f32]) -> Partial {
        let (group, hd, n) = (
            self.p.n_heads / self.p.n_kv_heads,
            self.p.head_dim,
            self.c1 - self.c0,
        );
        let pos = self.q_start + self.i;
        let mut part = Partial {
            max: vec![0.0; group],
            sum: vec![0.0; group],
            acc: vec![0.0; group * hd],
        };
        for g in 0..group {
            let h = self.kh * group + g;
            let row = &mut scores[g * n..(g + 1) * n];
            for (jj, x) in row.iter_mut().enumerate() {
                *x = *x * self.p.scale + self.p.bias(h, pos, self.c0 + jj);
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for x in row.iter_mut() {
                *x = (*x - m).exp();
                s += *x;
            }
            part.max[g] = m;
            part.sum[g] = s;
        }
        part
    }
}

/// AVX2+FMA chunk kernel for head_dim a multiple of 8: scores for four keys at a time (four
/// independent FMA chains, then one horizontal reduction for all four), and the weighted sum of
/// values accumulated in registers per head.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_chunk_avx2<S: KvRows>(c: &Chunk<S>, scratch: &mut Vec<f32>) -> Partial {
    use std::arch::x86_64::*;
    let (group, hd, n) = (c.p.n_heads / c.p.n_kv_heads, c.p.head_dim, c.c1 - c.c0);
    if hd % 8 != 0 || hd > 256 {
        return decode_chunk(c, scratch);
    }
    let mut runs = Vec::new();
    c.src.runs(c.kh, c.c0, c.c1, false, scratch, &mut runs);
    // SAFETY (for every raw read of a run below): rows t < r.n of a run lie within r.rows,
    // which this check guarantees for the last row; q rows come from the bounds-checked `q_row`.
    // Scores of a run are written at g·n + off + t < group·n: checked here too.
    let check = |r: &Run| {
        assert!(r.off + r.n <= n && (r.n == 0 || (r.n - 1) * r.stride + hd <= r.rows.len()))
    };
    runs.iter().for_each(check);
    let mut scores = vec![0.0f32; group * n];
    for g in 0..group {
        let q = c.q_row(g).as_ptr();
        for r in &runs {
            // Fields copied to locals: the stores through `out` would otherwise make the
            // compiler reload them every iteration (it cannot tell they do not alias).
            let (rp, rn, rs) = (r.rows.as_ptr(), r.n, r.stride);
            let out = scores.as_mut_ptr().add(g * n + r.off);
            let mut t = 0;
            while t + 4 <= rn {
                let rows: [*const f32; 4] = std::array::from_fn(|u| rp.add((t + u) * rs));
                let (mut a0, mut a1, mut a2, mut a3) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                let mut d = 0;
                while d < hd {
                    let qv = _mm256_loadu_ps(q.add(d));
                    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[0].add(d)), a0);
                    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[1].add(d)), a1);
                    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[2].add(d)), a2);
                    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[3].add(d)), a3);
                    d += 8;
                }
                let s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                let sums = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
                _mm_storeu_ps(out.add(t), sums);
                t += 4;
            }
            while t < rn {
                *out.add(t) = dot_portable(c.q_row(g), &r.rows[t * rs..][..hd]);
                t += 1;
            }
        }
    }
    let mut part = c.softmax_parts(&mut scores);
    drop(runs);
    let mut runs = Vec::new();
    c.src.runs(c.kh, c.c0, c.c1, true, scratch, &mut runs);
    runs.iter().for_each(check);
    let mut acc = [_mm256_setzero_ps(); 32];
    let lanes = hd / 8;
    for g in 0..group {
        acc[..lanes]
            .iter_mut()
            .for_each(|a| *a = _mm256_setzero_ps());
        for r in &runs {
            let (rp, rs, w0) = (
                r.rows.as_ptr(),
                r.stride,
                scores.as_ptr().add(g * n + r.off),
            );
            for t in 0..r.n {
                let w = _mm256_set1_ps(*w0.add(t));
                let row = rp.add(t * rs);
                for (l, a) in acc[..lanes].iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(l * 8)), *a);
                }
            }
        }
        let out = part.acc.as_mut_ptr().add(g * hd);
        for (l, a) in acc[..lanes].iter().enumerate() {
            _mm256_storeu_ps(out.add(l * 8), *a);
        }
    }
    part
}

/// Decode: each key and value row is read once per GQA group (not once per query head), which
/// matters because the cache at long contexts does not fit in cache memory. Keys `0..n_kv` are
/// read through `src`; only the keys each query can see are read.
pub(crate) fn decode<S: KvRows>(
    q: &[f32],
    src: &S,
    n_kv: usize,
    q_start: usize,
    p: &AttnParams,
    out: &mut [f32],
) {
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let n_q = q.len() / (nh * hd);
    let group = nh / nkv;
    let mut tasks = Vec::new();
    for i in 0..n_q {
        let (lo, hi) = p.visible(q_start + i, n_kv);
        for kh in 0..nkv {
            let mut c = lo;
            while c < hi {
                let e = (c + DECODE_CHUNK).min(hi);
                tasks.push((i, kh, c, e));
                c = e;
            }
        }
    }
    let run = |&(i, kh, c0, c1): &(usize, usize, usize, usize)| -> Partial {
        let chunk = Chunk {
            q,
            src,
            q_start,
            p,
            i,
            kh,
            c0,
            c1,
        };
        #[cfg(target_arch = "x86_64")]
        if super::vec::has_avx2_fma() {
            // SAFETY: AVX2 and FMA are available (checked above).
            return with_scratch(|s| unsafe { decode_chunk_avx2(&chunk, s) });
        }
        with_scratch(|s| decode_chunk(&chunk, s))
    };
    let parts: Vec<Partial> = if n_kv * nh * n_q >= 4096 {
        tasks.par_iter().map(run).collect()
    } else {
        tasks.iter().map(run).collect()
    };
    // Merge the chunks of each (query, kv head): rescale by exp(max_c - max) and normalise.
    out.iter_mut().for_each(|x| *x = 0.0);
    let mut t = 0;
    while t < tasks.len() {
        let (i, kh, _, _) = tasks[t];
        let mut e = t;
        while e < tasks.len() && tasks[e].0 == i && tasks[e].1 == kh {
            e += 1;
        }
        for g in 0..group {
            let h = kh * group + g;
            let m = parts[t..e]
                .iter()
                .map(|pt| pt.max[g])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut denom = 0.0;
            let o = &mut out[(i * nh + h) * hd..(i * nh + h + 1) * hd];
            for pt in &parts[t..e] {
                let w = (pt.max[g] - m).exp();
                denom += w * pt.sum[g];
                axpy(w, &pt.acc[g * hd..(g + 1) * hd], o);
            }
            if denom > 0.0 {
                let inv = 1.0 / denom;
                o.iter_mut().for_each(|x| *x *= inv);
            }
        }
        t = e;
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

#[cfg(test)]
#[path = "tests/attention.rs"]
mod tests;
