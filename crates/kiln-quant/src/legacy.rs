//! What the 32-value "legacy" formats (Q4_0, Q4_1, Q8_0) share: one kernel shape.
//!
//! All three are, per block, `w = d * q + m` with `q` unsigned bytes (Q4_0: `m = -8d`,
//! Q4_1: stored `m`, Q8_0 on VNNI: `q = qs + 128`, `m = -128d`), so against a [`BlockQ8`]
//! `Σ w·y = d·dy·Σ q·qy + m·s`. Each format implements [`Legacy`] (its byte layout); the
//! kernels (scalar here, SIMD in `x86::legacy`) are written once, generic over it.

use crate::act::BlockQ8;
use crate::matmul::Job;

/// A 32-value block format with a `d * q + m` structure (see the module doc).
pub(crate) trait Legacy {
    const BYTES: usize;
    /// The stored values are signed bytes (Q8_0). `unpack` then returns them as they are, `scales`
    /// returns `m = 0`, and the kernels handle the sign (AVX2: `vpsignb`; VNNI: +128 offset).
    const SIGNED: bool = false;

    /// Reference dot product of one block (`w.len() >= BYTES`) with one activation block.
    fn dot_block(w: &[u8], a: &BlockQ8) -> f32;

    /// `(d, m)` of the block at `p`.
    ///
    /// # Safety
    /// `p` points at `BYTES` readable bytes; F16C is available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn scales(p: *const u8) -> (f32, f32);

    /// The 32 values of the block at `p` as bytes, in activation order.
    ///
    /// # Safety
    /// `p` points at `BYTES` readable bytes; AVX2 is available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn unpack(p: *const u8) -> std::arch::x86_64::__m256i;
}

/// Reference dot product of one weight row with one token's activation blocks.
pub(crate) fn dot_row<F: Legacy>(w: &[u8], a: &[BlockQ8]) -> f32 {
    w.chunks_exact(F::BYTES)
        .zip(a)
        .map(|(w, a)| F::dot_block(w, a))
        .sum()
}

/// Scalar kernel: output rows `r0..r1` for every token.
///
/// # Safety
/// As [`Job::set`]: no other thread writes rows `r0..r1`, and `r1 <= job.rows`.
pub(crate) unsafe fn chunk_scalar<F: Legacy>(job: &Job<BlockQ8>, r0: usize, r1: usize) {
    for t in 0..job.n_tokens {
        let a = &job.acts[t * job.nb..(t + 1) * job.nb];
        for r in r0..r1 {
            let w = &job.w[r * job.row_bytes..(r + 1) * job.row_bytes];
            // SAFETY: forwarded from this function's contract.
            unsafe { job.set(t, r, dot_row::<F>(w, a)) };
        }
    }
}
