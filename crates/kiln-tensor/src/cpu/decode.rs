//! Decode attention: a few queries (one per sequence in a serving step) against the cache.
//!
//! Work is split into tasks of one (query, kv head, chunk of `DECODE_CHUNK` visible keys); each
//! task computes, for every query head of the GQA group, the scores, the chunk's softmax max and
//! sum and the unnormalised weighted sum of values (flash-decoding's partials), and the chunks
//! of a (query, kv head) are merged with their log-sum-exp. The split depends on the key count
//! only, never on the number of threads, so a sequence's result is the same however many
//! threads run and whatever else is in the step (batch invariance).
//!
//! Rows come through [`KvRows`], so one kernel serves the contiguous cache and the paged pool
//! (read in place, or dequantized into a per-thread scratch). Kernels: the portable one here
//! (the reference of the SIMD ones in tests) and AVX2 / AVX-512 ones in `decode_x86.rs`, picked
//! at run time. No heap allocation per task: scores and scratch are per-thread buffers reused
//! across calls, the partials of a call are one flat buffer.

use rayon::prelude::*;

use super::attention::AttnParams;
use super::vec::{axpy, axpy_portable, dot_portable};

/// Keys per decode task: a GQA group's visible keys are split into chunks of this size so two
/// threads stay busy even with few kv heads; chunks are merged with their log-sum-exp.
pub(crate) const DECODE_CHUNK: usize = 128;

/// Where decode reads key and value rows: the contiguous `(n_kv, n_kv_heads, head_dim)` slices
/// ([`Contiguous`]), or a paged block pool (`paged_attention.rs`) whose rows are read in place.
pub(crate) trait KvRows: Sync {
    /// Sets `out[t]` to the `head_dim` values of key `c0 + t` of kv head `kh` (of V with
    /// `values`, else of K) for every `t < out.len()` (at most `DECODE_CHUNK`). A source storing
    /// rows in another format dequantizes them into `scratch` and points there; `scratch` comes
    /// with stale contents from earlier chunks (it is reused), so only grow it, never count on
    /// zeros.
    fn rows<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        values: bool,
        scratch: &'s mut Vec<f32>,
        out: &mut [&'s [f32]],
    );
}

pub(crate) struct Contiguous<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub kv_stride: usize,
    pub head_dim: usize,
}

impl KvRows for Contiguous<'_> {
    fn rows<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        values: bool,
        _scratch: &'s mut Vec<f32>,
        out: &mut [&'s [f32]],
    ) {
        let src = if values { self.v } else { self.k };
        for (t, row) in out.iter_mut().enumerate() {
            let start = (c0 + t) * self.kv_stride + kh * self.head_dim;
            *row = &src[start..start + self.head_dim];
        }
    }
}

/// Per-thread buffers of the chunk kernels, reused across chunks and calls so that nothing is
/// allocated per task: `scratch_k`, `scratch_v` for rows a `KvRows` source converts (f16,
/// int8; two, so that a kernel can hold the K and V rows of a chunk at once), `scores` for a
/// chunk's `(group, n)` scores and probabilities.
#[derive(Default)]
pub(crate) struct Buffers {
    pub scratch_k: Vec<f32>,
    pub scratch_v: Vec<f32>,
    pub scores: Vec<f32>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        // Only if a kernel ever nested inside another on one thread: use fresh buffers.
        Err(_) => f(&mut Buffers::default()),
    })
}

/// One decode task: query `i`, kv head `kh`, keys `c0..c1` (`c1 - c0 <= DECODE_CHUNK`).
pub(crate) struct Chunk<'a, S> {
    pub q: &'a [f32],
    pub src: &'a S,
    pub q_start: usize,
    pub p: &'a AttnParams<'a>,
    pub i: usize,
    pub kh: usize,
    pub c0: usize,
    pub c1: usize,
}

/// Floats of one task's partial: `max (group) | sum (group) | acc (group, head_dim)`.
pub(crate) fn partial_len(p: &AttnParams) -> usize {
    (p.n_heads / p.n_kv_heads) * (p.head_dim + 2)
}

impl<S> Chunk<'_, S> {
    pub fn group(&self) -> usize {
        self.p.n_heads / self.p.n_kv_heads
    }

    /// Query row of head `g` of the group (`head_dim` values).
    pub fn q_row(&self, g: usize) -> &[f32] {
        let (nh, hd) = (self.p.n_heads, self.p.head_dim);
        let h = self.kh * self.group() + g;
        &self.q[(self.i * nh + h) * hd..][..hd]
    }

    /// Whether any additive score bias (ALiBi, relative) applies.
    pub fn has_bias(&self) -> bool {
        self.p.alibi_slopes.is_some() || self.p.rel_bias.is_some()
    }

    /// Adds the score bias of head `g` to the chunk's scaled scores `row`.
    pub fn add_bias(&self, g: usize, row: &mut [f32]) {
        let (h, pos) = (self.kh * self.group() + g, self.q_start + self.i);
        for (jj, x) in row.iter_mut().enumerate() {
            *x += self.p.bias(h, pos, self.c0 + jj);
        }
    }

    /// Scales raw dot products, adds the bias, and turns each head's row of `scores` `(group,
    /// n)` into unnormalised probabilities, recording the row max and sum in `stats` (`max
    /// (group) | sum (group)`) for the merge.
    pub fn softmax_parts(&self, scores: &mut [f32], stats: &mut [f32]) {
        let (group, n) = (self.group(), self.c1 - self.c0);
        for g in 0..group {
            let row = &mut scores[g * n..(g + 1) * n];
            row.iter_mut().for_each(|x| *x *= self.p.scale);
            if self.has_bias() {
                self.add_bias(g, row);
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for x in row.iter_mut() {
                *x = (*x - m).exp();
                s += *x;
            }
            stats[g] = m;
            stats[group + g] = s;
        }
    }
}

/// Portable chunk kernel (also the SIMD ones' reference in tests): writes the task's partial
/// (see [`partial_len`]) into `part`.
pub(crate) fn decode_chunk<S: KvRows>(c: &Chunk<S>, b: &mut Buffers, part: &mut [f32]) {
    let (group, hd, n) = (c.group(), c.p.head_dim, c.c1 - c.c0);
    let Buffers {
        scratch_k,
        scratch_v,
        scores,
    } = b;
    if scores.len() < group * n {
        scores.resize(group * n, 0.0);
    }
    let scores = &mut scores[..group * n];
    let (stats, acc) = part.split_at_mut(2 * group);
    {
        let mut rows = [&[][..]; DECODE_CHUNK];
        c.src.rows(c.kh, c.c0, false, scratch_k, &mut rows[..n]);
        for (t, krow) in rows[..n].iter().enumerate() {
            for g in 0..group {
                scores[g * n + t] = dot_portable(c.q_row(g), krow);
            }
        }
    }
    c.softmax_parts(scores, stats);
    let mut rows = [&[][..]; DECODE_CHUNK];
    c.src.rows(c.kh, c.c0, true, scratch_v, &mut rows[..n]);
    acc.fill(0.0);
    for (t, vrow) in rows[..n].iter().enumerate() {
        for g in 0..group {
            axpy_portable(scores[g * n + t], vrow, &mut acc[g * hd..(g + 1) * hd]);
        }
    }
}

/// A chunk kernel. Only [`Kernel::available`] ones are ever run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    /// AVX2 + FMA, head_dim a multiple of 8.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F, head_dim a multiple of 16.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// Whether this CPU runs the kernel and the kernel takes `head_dim`.
    pub fn available(self, head_dim: usize) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::vec::has_avx2_fma() && head_dim.is_multiple_of(8),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => super::vec::has_avx512() && head_dim.is_multiple_of(16),
        }
    }

    /// The fastest available kernel for `head_dim`.
    pub fn best(head_dim: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        for k in [Kernel::Avx512, Kernel::Avx2] {
            if k.available(head_dim) {
                return k;
            }
        }
        Kernel::Portable
    }

    /// Runs the kernel on one task, writing its partial into `part`.
    ///
    /// # Safety
    /// `self.available(c.p.head_dim)`.
    unsafe fn run<S: KvRows>(self, c: &Chunk<S>, b: &mut Buffers, part: &mut [f32]) {
        match self {
            Kernel::Portable => decode_chunk(c, b, part),
            // SAFETY: available (the caller's contract): the CPU has the features and the
            // kernel takes this head_dim.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { super::decode_x86::decode_chunk_avx2(c, b, part) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { super::decode_x86::decode_chunk_avx512(c, b, part) },
        }
    }
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
    decode_with(Kernel::best(p.head_dim), q, src, n_kv, q_start, p, out)
}

/// [`decode`] with the given kernel (tests compare them).
pub(crate) fn decode_with<S: KvRows>(
    kernel: Kernel,
    q: &[f32],
    src: &S,
    n_kv: usize,
    q_start: usize,
    p: &AttnParams,
    out: &mut [f32],
) {
    assert!(
        kernel.available(p.head_dim),
        "decode: {kernel:?} kernel unavailable"
    );
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
    let plen = partial_len(p);
    let mut parts = vec![0.0f32; tasks.len() * plen];
    let run = |(&(i, kh, c0, c1), part): (&(usize, usize, usize, usize), &mut [f32])| {
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
        // SAFETY: the kernel is available (asserted above).
        with_buffers(|b| unsafe { kernel.run(&chunk, b, part) });
    };
    if n_kv * nh * n_q >= 4096 {
        tasks
            .par_iter()
            .zip(parts.par_chunks_mut(plen))
            .for_each(run);
    } else {
        tasks.iter().zip(parts.chunks_mut(plen)).for_each(run);
    }
    // Merge the chunks of each (query, kv head): rescale by exp(max_c - max) and normalise.
    out.iter_mut().for_each(|x| *x = 0.0);
    let mut t = 0;
    while t < tasks.len() {
        let (i, kh, _, _) = tasks[t];
        let mut e = t;
        while e < tasks.len() && tasks[e].0 == i && tasks[e].1 == kh {
            e += 1;
        }
        let mine = &parts[t * plen..e * plen];
        for g in 0..group {
            let h = kh * group + g;
            let o = &mut out[(i * nh + h) * hd..(i * nh + h + 1) * hd];
            let acc = 2 * group + g * hd..2 * group + (g + 1) * hd;
            let denom = if e == t + 1 {
                // One chunk: exp(max - max) = 1, so this is the general case's result, cheaper.
                o.copy_from_slice(&mine[acc]);
                mine[group + g]
            } else {
                let m = mine
                    .chunks_exact(plen)
                    .map(|pt| pt[g])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut denom = 0.0;
                for pt in mine.chunks_exact(plen) {
                    let w = (pt[g] - m).exp();
                    denom += w * pt[group + g];
                    axpy(w, &pt[acc.clone()], o);
                }
                denom
            };
            if denom > 0.0 {
                let inv = 1.0 / denom;
                o.iter_mut().for_each(|x| *x *= inv);
            }
        }
        t = e;
    }
}

#[cfg(test)]
#[path = "tests/decode.rs"]
mod tests;
