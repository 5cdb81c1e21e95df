//! Decode attention: a few queries (one per sequence in a serving step) against the cache.
//!
//! Work is split into tasks of one (query, chunk of `DECODE_CHUNK` visible keys); each task
//! computes, for every kv head and every query head of its GQA group, the scores, the chunk's
//! softmax max and sum and the unnormalised weighted sum of values (flash-decoding's partials),
//! and the chunks of a (query, kv head) are merged with their log-sum-exp. All kv heads in one
//! task because a paged block holds the kv heads' rows side by side: the AVX-512 kernel reads
//! them in one sweep (a task per kv head, as before, read 4 KB pieces; measured ~10% slower). The split depends on the key count
//! only, never on the number of threads, so a sequence's result is the same however many
//! threads run and whatever else is in the step (batch invariance).
//!
//! Rows come through [`KvRows`], so one kernel serves the contiguous cache and the paged pool
//! (read in place, or dequantized into a per-thread scratch). Kernels: the portable one here
//! (the reference of the SIMD ones in tests) and AVX2 / AVX-512 ones in `decode_avx2.rs` / `decode_avx512.rs`, picked
//! at run time. No heap allocation per task: scores and scratch are per-thread buffers reused
//! across calls, the partials of a call are one flat buffer.

use half::f16;
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

    /// The format the source stores, which kernels may read in place through `rows_f16` /
    /// `rows_i8` instead of converting through `rows`.
    fn stored(&self) -> Stored {
        Stored::F32
    }

    /// For a source storing f16: sets `out[t]` to the f16 row of key `c0 + t` in place, so a
    /// kernel that widens as it loads reads half the bytes of f32 and writes no scratch. Other
    /// sources leave `out` alone.
    fn rows_f16<'s>(&'s self, _kh: usize, _c0: usize, _values: bool, _out: &mut [&'s [f16]]) {}

    /// For a source storing int8 rows with one scale each: sets `out[t]` to key `c0 + t`'s int8
    /// row in place and `scales[t]` to its scale (the row is `scales[t] · out[t]`). Other
    /// sources leave both alone.
    fn rows_i8<'s>(
        &'s self,
        _kh: usize,
        _c0: usize,
        _values: bool,
        _out: &mut [&'s [i8]],
        _scales: &mut [f32],
    ) {
    }
}

/// What a [`KvRows`] source stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    F32,
    F16,
    Int8,
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

/// Kv heads the AVX-512 kernel reads together: their rows of a block are adjacent in the paged
/// pool, so reading them in one sweep streams one longer run of memory.
pub(crate) const KV_TILE: usize = 4;

/// Per-thread buffers of the chunk kernels, reused across chunks and calls so that nothing is
/// allocated per task: `scratch` for rows a `KvRows` source converts (f16, int8): K and V of up
/// to `KV_TILE` kv heads (`2 * KV_TILE` buffers), so that a kernel can hold them all at once;
/// `scores` for a task's `(kv heads, group, n)` scores and probabilities.
pub(crate) struct Buffers {
    pub scratch: Vec<Vec<f32>>,
    pub scores: Vec<f32>,
}

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers {
            scratch: vec![Vec::new(); 2 * KV_TILE],
            scores: Vec::new(),
        }
    }
}

impl Buffers {
    /// The scratch buffers and the first `n` scores (grown if needed; stale contents).
    pub fn split(&mut self, n: usize) -> (&mut [Vec<f32>], &mut [f32]) {
        if self.scores.len() < n {
            self.scores.resize(n, 0.0);
        }
        (&mut self.scratch, &mut self.scores[..n])
    }
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

/// One kv head's part of a decode task: query `i`, kv head `kh`, keys `c0..c1` (`c1 - c0 <=
/// DECODE_CHUNK`).
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

/// Floats of one kv head's partial: `max (group) | sum (group) | acc (group, head_dim)`; a
/// task's partial is those of all kv heads in order.
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

/// Fills `rows` with the chunk's K (or V) rows and checks each holds `head_dim` values: the
/// kernels' raw reads rely on it.
pub(crate) fn fetch_rows<'s, S: KvRows>(
    c: &'s Chunk<S>,
    values: bool,
    scratch: &'s mut Vec<f32>,
    rows: &mut [&'s [f32]],
) {
    c.src.rows(c.kh, c.c0, values, scratch, rows);
    let hd = c.p.head_dim;
    assert!(rows.iter().all(|r| r.len() == hd), "decode: row length");
}

/// Portable chunk kernel (also the SIMD ones' reference in tests): writes the task's partial
/// (see [`partial_len`]) into `part`.
pub(crate) fn decode_chunk<S: KvRows>(c: &Chunk<S>, b: &mut Buffers, part: &mut [f32]) {
    let (group, hd, n) = (c.group(), c.p.head_dim, c.c1 - c.c0);
    let (scratch, scores) = b.split(group * n);
    let (stats, acc) = part.split_at_mut(2 * group);
    {
        let mut rows = [&[][..]; DECODE_CHUNK];
        c.src
            .rows(c.kh, c.c0, false, &mut scratch[0], &mut rows[..n]);
        for (t, krow) in rows[..n].iter().enumerate() {
            for g in 0..group {
                scores[g * n + t] = dot_portable(c.q_row(g), krow);
            }
        }
    }
    c.softmax_parts(scores, stats);
    let mut rows = [&[][..]; DECODE_CHUNK];
    c.src
        .rows(c.kh, c.c0, true, &mut scratch[1], &mut rows[..n]);
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

    /// Runs the kernel on one task (query `i`, keys `c0..c1`, every kv head), writing its
    /// partial into `part`.
    ///
    /// # Safety
    /// `self.available(p.head_dim)`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run<S: KvRows>(
        self,
        (q, src, q_start, p): (&[f32], &S, usize, &AttnParams),
        (i, c0, c1): (usize, usize, usize),
        b: &mut Buffers,
        part: &mut [f32],
    ) {
        let plen = partial_len(p);
        let chunk = |kh| Chunk {
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
        if self == Kernel::Avx512 {
            for (t, part) in part.chunks_mut(KV_TILE * plen).enumerate() {
                let m = part.len() / plen;
                let cs: [Chunk<S>; KV_TILE] =
                    std::array::from_fn(|j| chunk(t * KV_TILE + j.min(m - 1)));
                // SAFETY: available (the caller's contract): the CPU has AVX-512F and
                // head_dim % 16 == 0.
                unsafe {
                    use super::decode_avx512::decode_heads_avx512 as heads;
                    match src.stored() {
                        Stored::F32 => heads::<S, f32>(&cs[..m], b, part),
                        Stored::F16 => heads::<S, f16>(&cs[..m], b, part),
                        Stored::Int8 => heads::<S, i8>(&cs[..m], b, part),
                    }
                };
            }
            return;
        }
        for (kh, part) in part.chunks_mut(plen).enumerate() {
            let c = chunk(kh);
            match self {
                // SAFETY: available (the caller's contract): the CPU has AVX2 and FMA and
                // head_dim % 8 == 0.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { super::decode_avx2::decode_chunk_avx2(&c, b, part) },
                _ => decode_chunk(&c, b, part),
            }
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
    // Tasks: (query, chunk of visible keys), every kv head of the query in one task.
    let mut tasks = Vec::new();
    for i in 0..n_q {
        let (lo, hi) = p.visible(q_start + i, n_kv);
        let mut c = lo;
        while c < hi {
            let e = (c + DECODE_CHUNK).min(hi);
            tasks.push((i, c, e));
            c = e;
        }
    }
    let plen = partial_len(p);
    let tlen = nkv * plen;
    let mut parts = vec![0.0f32; tasks.len() * tlen];
    let run = |(&task, part): (&(usize, usize, usize), &mut [f32])| {
        // SAFETY: the kernel is available (asserted above).
        with_buffers(|b| unsafe { kernel.run((q, src, q_start, p), task, b, part) });
    };
    if n_kv * nh * n_q >= 4096 {
        tasks
            .par_iter()
            .zip(parts.par_chunks_mut(tlen))
            .for_each(run);
    } else {
        tasks.iter().zip(parts.chunks_mut(tlen)).for_each(run);
    }
    // Merge the chunks of each (query, kv head): rescale by exp(max_c - max) and normalise.
    out.iter_mut().for_each(|x| *x = 0.0);
    let mut t = 0;
    while t < tasks.len() {
        let i = tasks[t].0;
        let mut e = t;
        while e < tasks.len() && tasks[e].0 == i {
            e += 1;
        }
        for kh in 0..nkv {
            // This kv head's partial in each of the query's tasks.
            let chunks = || {
                parts[t * tlen..e * tlen]
                    .chunks_exact(tlen)
                    .map(|pt| &pt[kh * plen..(kh + 1) * plen])
            };
            for g in 0..group {
                let h = kh * group + g;
                let o = &mut out[(i * nh + h) * hd..(i * nh + h + 1) * hd];
                let acc = 2 * group + g * hd..2 * group + (g + 1) * hd;
                let denom = if e == t + 1 {
                    // One chunk: exp(max - max) = 1, so this is the general case's result,
                    // cheaper.
                    let pt = chunks().next().expect("one chunk");
                    o.copy_from_slice(&pt[acc]);
                    pt[group + g]
                } else {
                    let m = chunks().map(|pt| pt[g]).fold(f32::NEG_INFINITY, f32::max);
                    let mut denom = 0.0;
                    for pt in chunks() {
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
        }
        t = e;
    }
}

#[cfg(test)]
#[path = "tests/decode.rs"]
mod tests;
