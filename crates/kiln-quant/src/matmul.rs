//! [`QMatrix`]: a GGUF weight matrix and its `x · Wᵀ` matmul.
//!
//! The call: (1) quantize the activations once, per token row, to the 8-bit format matching the
//! weights (into a thread-local scratch, so decode allocates nothing); (2) split the output rows
//! into chunks, one rayon task each; (3) each task walks token tiles × row tiles of its chunk,
//! so a chunk's weights stay in L1/L2 while the prefill tokens stream past.
//!
//! Chunking: at least 16 rows, a multiple of 4 (the row tile), about 4 chunks per thread for
//! decode (load balance; every task costs ~1 µs) and at most 128 KiB of weights for prefill (also on one thread).

use std::cell::Cell;
use std::sync::Arc;
use std::thread::LocalKey;

use rayon::prelude::*;

use crate::act::{self, BlockQ8, BlockQ8K};
use crate::legacy::{self, Legacy};
use crate::packed8::{self, Packed8};
use crate::{plain, q4_0::Q4_0, q4_1::Q4_1, q4_k, q5_0::Q5_0, q5_1::Q5_1, q6_k, q8_0::Q8_0};
use crate::{Error, GgmlType, Isa, Result, SharedBytes};

/// A `rows × cols` weight matrix (`rows` output features, `cols` input features) in GGUF layout:
/// row-major, each row `cols / block_size` blocks of `ty`.
#[derive(Clone, Debug)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: SharedBytes,
    /// Q4_0/Q4_1/Q8_0 weights regrouped for the x86 kernels (see [`crate::packed8`]); the
    /// scalar path and `dequantize_row` read `data`.
    packed: Option<Arc<Packed8>>,
}

impl QMatrix {
    /// Wraps `data`; errors if the type has no kernels here, `cols` is not a whole number of
    /// blocks, or `data` is not exactly `rows` rows.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: SharedBytes) -> Result<Self> {
        if !ty.is_supported() {
            return Err(Error::Unsupported { ty, op: "QMatrix" });
        }
        let row_bytes = ty.row_bytes(cols)?;
        let expected = row_bytes.checked_mul(rows).ok_or(Error::Overflow {
            what: "matrix bytes",
        })?;
        if data.len() != expected {
            return Err(Error::SizeMismatch {
                what: "QMatrix data bytes",
                expected,
                got: data.len(),
            });
        }
        let packed = packed8::Kind::of(ty)
            .filter(|_| repack())
            .map(|kind| Arc::new(Packed8::pack(kind, data.as_slice(), rows, cols / 32)));
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            data,
            packed,
        })
    }

    /// Quantizes a row-major f32 matrix (for tests, benchmarks and small tensors).
    pub fn quantize(ty: GgmlType, rows: usize, cols: usize, w: &[f32]) -> Result<Self> {
        let n = rows.checked_mul(cols).ok_or(Error::Overflow {
            what: "matrix size",
        })?;
        if w.len() != n {
            return Err(Error::SizeMismatch {
                what: "QMatrix::quantize input",
                expected: n,
                got: w.len(),
            });
        }
        ty.row_bytes(cols)?;
        Self::new(
            ty,
            rows,
            cols,
            SharedBytes::from_vec(crate::quantize(ty, w)?),
        )
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The raw GGUF bytes.
    pub fn data(&self) -> &SharedBytes {
        &self.data
    }

    /// Dequantizes row `i` into `out` (`cols` values); used for embedding lookups.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) -> Result<()> {
        if i >= self.rows {
            return Err(Error::RowOutOfRange {
                row: i,
                rows: self.rows,
            });
        }
        if out.len() != self.cols {
            return Err(Error::SizeMismatch {
                what: "dequantize_row output",
                expected: self.cols,
                got: out.len(),
            });
        }
        let bytes = &self.data.as_slice()[i * self.row_bytes..(i + 1) * self.row_bytes];
        crate::dequantize(self.ty, bytes, out)
    }

    /// The whole matrix as row-major f32 (tests and small tensors only).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.rows * self.cols];
        crate::dequantize(self.ty, self.data.as_slice(), &mut out)?;
        Ok(out)
    }

    /// `out[t * rows + r] = Σ_k x[t * cols + k] * W[r][k]`: `out = x · Wᵀ` with `x` of shape
    /// `(n_tokens, cols)` and `out` of shape `(n_tokens, rows)`, both row-major.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
        self.run(Isa::detect(), x, n_tokens, out)
    }

    /// [`matmul`](Self::matmul) with a chosen instruction set (tests compare them); errors if this
    /// CPU lacks it.
    pub fn matmul_isa(&self, isa: Isa, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
        if !Isa::available().contains(&isa) {
            return Err(Error::Unsupported {
                ty: self.ty,
                op: "matmul with an instruction set this CPU lacks",
            });
        }
        self.run(isa, x, n_tokens, out)
    }

    /// `outs[i] = x · mats[i]ᵀ` for matrices taking the same input: with the packed kernels
    /// (Q4_0/Q4_1/Q8_0 on x86) and equal `cols`, the input is quantized once and all products
    /// run in one parallel region (a layer's q/k/v or gate/up projections: fewer fork/joins and
    /// better load balance than one call each); otherwise one [`matmul`](Self::matmul) each.
    /// The results are bit-identical to separate calls.
    pub fn matmul_many(
        mats: &[&QMatrix],
        x: &[f32],
        n_tokens: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        if mats.len() != outs.len() {
            return Err(Error::SizeMismatch {
                what: "matmul_many outputs",
                expected: mats.len(),
                got: outs.len(),
            });
        }
        let isa = Isa::detect();
        let fused = cfg!(target_arch = "x86_64")
            && isa > Isa::Scalar
            && mats.len() > 1
            && mats
                .iter()
                .all(|m| m.packed.is_some() && m.cols == mats[0].cols && m.cols > 0);
        if !fused {
            for (m, out) in mats.iter().zip(outs.iter_mut()) {
                m.matmul(x, n_tokens, out)?;
            }
            return Ok(());
        }
        for (m, out) in mats.iter().zip(outs.iter()) {
            m.check_sizes(x, n_tokens, out)?;
        }
        if n_tokens > 0 {
            #[cfg(target_arch = "x86_64")]
            run_packed(isa, mats, x, n_tokens, outs);
        }
        Ok(())
    }

    /// `x` is `n_tokens × cols` and `out` `n_tokens × rows`.
    fn check_sizes(&self, x: &[f32], n_tokens: usize, out: &[f32]) -> Result<()> {
        let n_x = n_tokens.checked_mul(self.cols).ok_or(Error::Overflow {
            what: "matmul input",
        })?;
        if x.len() != n_x {
            return Err(Error::SizeMismatch {
                what: "matmul input x",
                expected: n_x,
                got: x.len(),
            });
        }
        let n_out = n_tokens.checked_mul(self.rows).ok_or(Error::Overflow {
            what: "matmul output",
        })?;
        if out.len() != n_out {
            return Err(Error::SizeMismatch {
                what: "matmul output",
                expected: n_out,
                got: out.len(),
            });
        }
        Ok(())
    }

    fn run(&self, isa: Isa, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
        self.check_sizes(x, n_tokens, out)?;
        if out.is_empty() {
            return Ok(());
        }
        if self.cols == 0 {
            out.fill(0.0);
            return Ok(());
        }
        match self.ty {
            #[cfg(target_arch = "x86_64")]
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0
                if self.packed.is_some() && isa > Isa::Scalar =>
            {
                run_packed(isa, &[self], x, n_tokens, &mut [out])
            }
            GgmlType::Q4_0 => self.run_legacy::<Q4_0>(isa, x, n_tokens, out),
            GgmlType::Q4_1 => self.run_legacy::<Q4_1>(isa, x, n_tokens, out),
            GgmlType::Q8_0 => self.run_legacy::<Q8_0>(isa, x, n_tokens, out),
            GgmlType::Q5_0 => self.run_legacy::<Q5_0>(isa, x, n_tokens, out),
            GgmlType::Q5_1 => self.run_legacy::<Q5_1>(isa, x, n_tokens, out),
            GgmlType::Q4_K => self.run_kquant(
                isa,
                x,
                n_tokens,
                out,
                q4_k::dot_row,
                q4_k::DOT_AVX2,
                q4_k::DOT4_AVX2,
            ),
            GgmlType::Q6_K => {
                self.run_kquant(isa, x, n_tokens, out, q6_k::dot_row, q6_k::DOT_AVX2, None)
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => self.run_plain(x, n_tokens, out),
            ty => return Err(Error::Unsupported { ty, op: "matmul" }),
        }
        Ok(())
    }

    fn run_legacy<F: Legacy>(&self, isa: Isa, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        let nb = self.cols / 32;
        // Token-tile kernels read the scales and sums of 4 tokens at once from `aux`:
        // `aux[b * n_tokens + t] = acts[t][b].d`, then the same for `.s`.
        let aux_len = if n_tokens >= 4 { 2 * nb * n_tokens } else { 0 };
        with_scratch(&SCRATCH_Q8, n_tokens * nb, |acts| {
            with_scratch(&SCRATCH_AUX, aux_len, |aux| {
                quantize_acts(x, self.cols, acts, nb, |x, a| {
                    act::quantize_row_q8_isa(isa, x, a)
                });
                if aux_len > 0 {
                    let (ds, ss) = aux.split_at_mut(nb * n_tokens);
                    for (t, row) in acts.chunks_exact(nb).enumerate() {
                        for (b, blk) in row.iter().enumerate() {
                            ds[b * n_tokens + t] = blk.d;
                            ss[b * n_tokens + t] = blk.s;
                        }
                    }
                }
                let chunk: unsafe fn(&Job<BlockQ8>, usize, usize) = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => crate::x86::legacy::chunk_avx2::<F>,
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512Vnni => crate::x86::legacy::chunk_vnni::<F>,
                    _ => legacy::chunk_scalar::<F>,
                };
                let job = Job {
                    aux,
                    ..self.job(acts, nb, n_tokens, out)
                };
                // SAFETY: `for_each_chunk` hands out disjoint row ranges within `0..rows`; `isa` is
                // available (checked by the callers of `run`).
                self.for_each_chunk(n_tokens, |r0, r1| unsafe { chunk(&job, r0, r1) });
            })
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn run_kquant(
        &self,
        isa: Isa,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
        scalar: RowDot<BlockQ8K>,
        simd: Option<RowDot<BlockQ8K>>,
        simd4: Option<RowDot4<BlockQ8K>>,
    ) {
        let nb = self.cols / 256;
        let (dot, dot4) = match (isa, simd) {
            (Isa::Avx2 | Isa::Avx512Vnni, Some(f)) => (f, simd4),
            _ => (scalar, None),
        };
        with_scratch(&SCRATCH_Q8K, n_tokens * nb, |acts| {
            quantize_acts(x, self.cols, acts, nb, act::quantize_row_q8k);
            let job = self.job(acts, nb, n_tokens, out);
            // SAFETY: disjoint row ranges as in `run_legacy`; `dot` is either safe or needs AVX2,
            // which `isa` (available) includes, and gets a whole row with its `nb` blocks.
            self.for_each_chunk(n_tokens, |r0, r1| unsafe {
                chunk_rows(&job, r0, r1, dot, dot4)
            });
        });
    }

    fn run_plain(&self, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        let job = self.job(x, self.cols, n_tokens, out);
        let ty = self.ty;
        self.for_each_chunk(n_tokens, |r0, r1| {
            let mut row = vec![0f32; job.nb];
            for r in r0..r1 {
                let w = &job.w[r * job.row_bytes..(r + 1) * job.row_bytes];
                match ty {
                    GgmlType::F16 => plain::dequantize_f16(w, &mut row),
                    GgmlType::BF16 => plain::dequantize_bf16(w, &mut row),
                    _ => plain::dequantize_f32(w, &mut row),
                }
                for t in 0..job.n_tokens {
                    let v = plain::dot_f32(&row, &job.acts[t * job.nb..(t + 1) * job.nb]);
                    // SAFETY: disjoint row ranges as in `run_legacy`.
                    unsafe { job.set(t, r, v) };
                }
            }
        });
    }

    fn job<'a, A>(
        &'a self,
        acts: &'a [A],
        nb: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) -> Job<'a, A> {
        Job {
            w: self.data.as_slice(),
            row_bytes: self.row_bytes,
            acts,
            aux: &[],
            nb,
            n_tokens,
            rows: self.rows,
            out: out.as_mut_ptr(),
            out_len: out.len(),
        }
    }

    /// Runs `f(r0, r1)` over chunks of output rows covering `0..rows`, in parallel.
    fn for_each_chunk(&self, n_tokens: usize, f: impl Fn(usize, usize) + Sync) {
        split(self.rows, self.row_bytes, 4, 16, n_tokens, f)
    }
}

/// Q4_0/Q4_1/Q8_0 products through the packed layout (x86 only; `isa` is AVX2 or better), for
/// one or several matrices with the same `cols` (`mats[i].packed` is set; `outs[i]` and `x` have
/// the sizes `run` checks): the activations are quantized once and every matrix's row groups
/// are the units of one parallel split.
#[cfg(target_arch = "x86_64")]
fn run_packed(isa: Isa, mats: &[&QMatrix], x: &[f32], n_tokens: usize, outs: &mut [&mut [f32]]) {
    let cols = mats[0].cols;
    let nb = cols / 32;
    // Only biased formats (Q4_0, Q8_0) read the activation sums; Q4_1 layers skip them.
    let biased = mats
        .iter()
        .any(|m| m.packed.as_ref().is_some_and(|p| p.kind.bias() != 0));
    let n_sums = if biased { n_tokens * nb } else { 0 };
    with_scratch(&SCRATCH_Q8, n_tokens * nb, |acts| {
        with_scratch(&SCRATCH_YSUM, n_sums, |ysum| {
            quantize_acts(x, cols, acts, nb, |x, a| {
                act::quantize_row_q8_isa(isa, x, a)
            });
            for (s, a) in ysum.iter_mut().zip(acts.iter()) {
                *s = a.qs.iter().map(|&q| q as i32).sum::<i32>();
            }
            let kernel: unsafe fn(&Packed8, &Job<BlockQ8>, &[i32], usize, usize) = match isa {
                Isa::Avx512Vnni => crate::x86::packed8::groups_vnni,
                _ => crate::x86::packed8::groups_avx2,
            };
            let parts: Vec<(&Packed8, Job<BlockQ8>)> = mats
                .iter()
                .zip(outs.iter_mut())
                .filter_map(|(m, out)| Some((m.packed.as_deref()?, m.job(acts, nb, n_tokens, out))))
                .collect();
            let total: usize = parts.iter().map(|(p, _)| p.groups).sum();
            let unit_bytes = parts
                .iter()
                .map(|(p, _)| p.group_bytes())
                .max()
                .unwrap_or(1);
            let ysum = &*ysum;
            split(total, unit_bytes, 1, 2, n_tokens, |u0, u1| {
                let mut base = 0;
                for (p, job) in &parts {
                    let (lo, hi) = (u0.max(base), u1.min(base + p.groups));
                    if lo < hi {
                        // SAFETY: `split` hands out disjoint unit ranges within `0..total`, so
                        // `lo - base .. hi - base` are disjoint group ranges within `p.groups`;
                        // `isa` is available (checked by the callers); `job` is this matrix's
                        // with `n_tokens * nb` activations, and as many sums whenever its
                        // format has a bias.
                        unsafe { kernel(p, job, ysum, lo - base, hi - base) };
                    }
                    base += p.groups;
                }
            });
        })
    });
}

/// Whether Q4_0/Q4_1/Q8_0 matrices are repacked at load: on x86 with SIMD kernels, unless
/// `KILN_REPACK=0` (for benchmarks against the GGUF-layout kernels in `x86::legacy`).
fn repack() -> bool {
    cfg!(target_arch = "x86_64")
        && Isa::detect() > Isa::Scalar
        && std::env::var("KILN_REPACK").as_deref() != Ok("0")
}

/// Runs `f(u0, u1)` over chunks of `n` units (rows, or row groups) of `unit_bytes` weight bytes
/// each, in parallel: chunks a multiple of `align` units and at least `min`, about 4 per thread
/// for decode (load balance; every task costs ~1 µs), at most `CHUNK_BYTES` of weights for
/// prefill (cache blocking, also on one thread: every token tile re-reads the chunk's weights).
fn split(
    n: usize,
    unit_bytes: usize,
    align: usize,
    min: usize,
    n_tokens: usize,
    f: impl Fn(usize, usize) + Sync,
) {
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && n * unit_bytes * n_tokens >= (1 << 15);
    let mut chunk = if parallel { n.div_ceil(threads * 4) } else { n };
    if n_tokens > 1 {
        chunk = chunk.min(CHUNK_BYTES / unit_bytes.max(1));
    }
    let mut chunk = chunk.max(min).next_multiple_of(align);
    let mut n_chunks = n.div_ceil(chunk);
    if parallel {
        // Round the chunk count to a multiple of the threads so the last wave is full.
        n_chunks = n_chunks.next_multiple_of(threads);
        chunk = n.div_ceil(n_chunks).next_multiple_of(align);
        n_chunks = n.div_ceil(chunk);
        crate::parallel::parallel_for(n_chunks, &|c| f(c * chunk, ((c + 1) * chunk).min(n)));
    } else {
        (0..n_chunks).for_each(|c| f(c * chunk, ((c + 1) * chunk).min(n)));
    }
}

/// Prefill weight chunk size: stays in L2 (1 MiB on Zen 4) while every token tile passes;
/// measured 32 KiB vs 128 KiB: equal for Q4_1, 128 KiB up to 15% faster for Q8_0.
const CHUNK_BYTES: usize = 128 << 10;

/// A row dot product: weight row bytes and the token's activation blocks.
pub(crate) type RowDot<A> = unsafe fn(&[u8], &[A]) -> f32;

/// Everything a kernel needs for one matmul call. `out` is written through a raw pointer because
/// the row chunks of different tasks interleave in memory (`out[t * rows + r]`).
pub(crate) struct Job<'a, A> {
    pub w: &'a [u8],
    pub row_bytes: usize,
    pub acts: &'a [A],
    /// Extra per-call data of some kernels (see `run_legacy`), else empty.
    pub aux: &'a [f32],
    /// Activation blocks (or values, for plain types) per token.
    pub nb: usize,
    pub n_tokens: usize,
    pub rows: usize,
    out: *mut f32,
    out_len: usize,
}

// SAFETY: `out` is only written through `Job::set`, whose contract makes concurrent writes
// disjoint; everything else is shared references.
unsafe impl<A: Sync> Sync for Job<'_, A> {}

impl<A> Job<'_, A> {
    /// Writes output `(t, r)`.
    ///
    /// # Safety
    /// `t < n_tokens`, `r < rows`, and no other thread writes the same row `r` during the call.
    #[inline(always)]
    pub(crate) unsafe fn set(&self, t: usize, r: usize, v: f32) {
        let i = t * self.rows + r;
        debug_assert!(t < self.n_tokens && r < self.rows && i < self.out_len);
        // SAFETY: in bounds by the contract (out_len == n_tokens * rows); exclusive by the contract.
        unsafe { self.out.add(i).write(v) }
    }
}

/// Four tokens at once: weight row bytes and the four tokens' activation blocks.
pub(crate) type RowDot4<A> = unsafe fn(&[u8], [&[A]; 4]) -> [f32; 4];

/// Rows `r0..r1` × every token through row dot products (K-quants): tiles of four tokens with
/// `dot4` when there is one, so each weight block is unpacked once per four tokens.
///
/// # Safety
/// As [`Job::set`]; `dot`'s and `dot4`'s own requirements hold for a whole row and its `nb`
/// blocks.
unsafe fn chunk_rows<A>(
    job: &Job<A>,
    r0: usize,
    r1: usize,
    dot: RowDot<A>,
    dot4: Option<RowDot4<A>>,
) {
    let mut t0 = 0;
    if let Some(dot4) = dot4 {
        while t0 + 4 <= job.n_tokens {
            let a: [&[A]; 4] =
                std::array::from_fn(|k| &job.acts[(t0 + k) * job.nb..(t0 + k + 1) * job.nb]);
            for r in r0..r1 {
                let w = &job.w[r * job.row_bytes..(r + 1) * job.row_bytes];
                // SAFETY: forwarded from this function's contract.
                let v = unsafe { dot4(w, a) };
                for (k, v) in v.into_iter().enumerate() {
                    // SAFETY: forwarded from this function's contract.
                    unsafe { job.set(t0 + k, r, v) };
                }
            }
            t0 += 4;
        }
    }
    for t in t0..job.n_tokens {
        let a = &job.acts[t * job.nb..(t + 1) * job.nb];
        for r in r0..r1 {
            let w = &job.w[r * job.row_bytes..(r + 1) * job.row_bytes];
            // SAFETY: forwarded from this function's contract.
            unsafe { job.set(t, r, dot(w, a)) };
        }
    }
}

thread_local! {
    static SCRATCH_Q8: Cell<Vec<BlockQ8>> = const { Cell::new(Vec::new()) };
    static SCRATCH_AUX: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SCRATCH_YSUM: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    static SCRATCH_Q8K: Cell<Vec<BlockQ8K>> = const { Cell::new(Vec::new()) };
}

/// Lends `f` a `len`-long slice of this thread's scratch. The vector is taken out of the cell
/// for the duration, so a re-entrant call (rayon may run another matmul on this thread while it
/// waits) gets a fresh vector instead of a `RefCell` panic.
fn with_scratch<T: Clone + Default, R>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = key.take();
    v.resize(len, T::default());
    let r = f(&mut v[..len]);
    key.set(v);
    r
}

/// Quantizes every token row of `x` (in parallel for prefill).
fn quantize_acts<A: Send>(
    x: &[f32],
    cols: usize,
    acts: &mut [A],
    nb: usize,
    q: impl Fn(&[f32], &mut [A]) + Sync,
) {
    let n_tokens = acts.len() / nb;
    if n_tokens >= 8 && rayon::current_num_threads() > 1 {
        acts.par_chunks_mut(nb)
            .zip(x.par_chunks(cols))
            .with_min_len(4)
            .for_each(|(a, x)| q(x, a));
    } else {
        for (a, x) in acts.chunks_mut(nb).zip(x.chunks(cols)) {
            q(x, a);
        }
    }
}
