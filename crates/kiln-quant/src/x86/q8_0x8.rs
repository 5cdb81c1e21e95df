//! AVX2 and AVX-512 VNNI kernels over the grouped Q8_0 layout ([`crate::q8_0x8`]).
//!
//! A tile is one group of 8 rows × `KT` tokens. Per block column: 8 aligned 32-byte loads of the
//! group's quants (once per tile), then per token 8 integer dot products reduced with `vphaddd`
//! into one vector `[row 0 .. row 7]`, one convert and one FMA with the 8 row scales times the
//! token's scale. VNNI computes `Σ (q + 128) y` with `vpdpbusd` and subtracts `128 Σ y` (given
//! per token and block in `ysum128`); AVX2 has no unsigned×signed 32-bit dot with enough range
//! for biased values, so it unbiases, takes `|q|` and moves the sign onto `y` as ggml does.

// The token loop indexes the accumulators and the activations together.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::act::BlockQ8;
use crate::matmul::Job;
use crate::q8_0x8::{PackedQ8x8, GROUP};

/// How far ahead (bytes) the weight stream is prefetched: about four block columns.
const PREFETCH: usize = 1024;

/// Sums each of the 8 vectors' lanes: lane `i` of the result is the sum of `p[i]`.
#[inline(always)]
unsafe fn reduce8(p: &[__m256i; 8]) -> __m256i {
    // SAFETY: AVX2 is enabled by the callers.
    unsafe {
        let h01 = _mm256_hadd_epi32(p[0], p[1]);
        let h23 = _mm256_hadd_epi32(p[2], p[3]);
        let h45 = _mm256_hadd_epi32(p[4], p[5]);
        let h67 = _mm256_hadd_epi32(p[6], p[7]);
        // Per 128-bit half: [r0 r1 r2 r3] over that half's lanes.
        let h0 = _mm256_hadd_epi32(h01, h23);
        let h1 = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256(h0, h1, 0x20),
            _mm256_permute2x128_si256(h0, h1, 0x31),
        )
    }
}

/// 32-pair dot product of biased weights `w` (`q + 128`) with `y`, as 8 partial sums; with VNNI
/// still biased (the caller subtracts `128 Σ y`), on AVX2 exact.
#[inline(always)]
unsafe fn dot<const VNNI: bool>(w: __m256i, y: __m256i) -> __m256i {
    // SAFETY: AVX2 (and AVX-512 VNNI+VL when `VNNI`) are enabled by the callers.
    unsafe {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, y)
        } else {
            let q = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }
}

/// Group `g` × tokens `t .. t + KT`.
#[inline(always)]
unsafe fn tile<const KT: usize, const VNNI: bool>(
    p: &PackedQ8x8,
    job: &Job<BlockQ8>,
    ysum128: &[i32],
    g: usize,
    t: usize,
) {
    let nb = p.nb;
    // SAFETY: `g < p.groups` and `t + KT <= n_tokens` (caller), so every quant/scale index below
    // is inside the planes (`groups * nb * 8` entries) and every activation index inside `acts`
    // and `ysum128` (`n_tokens * nb` entries).
    unsafe {
        let q = p.qs.as_ptr().add(g * nb * GROUP) as *const __m256i;
        let d = p.d.as_ptr().add(g * nb * GROUP);
        let mut acc = [_mm256_setzero_ps(); KT];
        for b in 0..nb {
            let qb = q.add(b * GROUP);
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>((qb as *const i8).wrapping_add(PREFETCH + 64 * l));
            }
            let w: [__m256i; GROUP] = std::array::from_fn(|i| _mm256_load_si256(qb.add(i)));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(b * GROUP) as *const __m128i));
            for k in 0..KT {
                let a = &*job.acts.as_ptr().add((t + k) * nb + b);
                let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                let prods: [__m256i; GROUP] = std::array::from_fn(|i| dot::<VNNI>(w[i], y));
                let mut s = reduce8(&prods);
                if VNNI {
                    s = _mm256_sub_epi32(
                        s,
                        _mm256_set1_epi32(*ysum128.get_unchecked((t + k) * nb + b)),
                    );
                }
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
            }
        }
        let r0 = g * GROUP;
        let n_rows = GROUP.min(job.rows - r0);
        for (k, a) in acc.iter().enumerate() {
            let mut v = [0f32; GROUP];
            _mm256_storeu_ps(v.as_mut_ptr(), *a);
            for (i, &x) in v.iter().enumerate().take(n_rows) {
                job.set(t + k, r0 + i, x);
            }
        }
    }
}

/// Groups `g0..g1` × every token: token tiles outer, so the groups' weights stay in cache while
/// the tokens pass.
#[inline(always)]
unsafe fn groups<const VNNI: bool>(
    p: &PackedQ8x8,
    job: &Job<BlockQ8>,
    ysum128: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: the tiles cover groups g0..g1 (within `p.groups`) and tokens 0..n_tokens exactly.
    unsafe {
        let mut t = 0;
        if VNNI {
            while t + 4 <= job.n_tokens {
                for g in g0..g1 {
                    tile::<4, VNNI>(p, job, ysum128, g, t);
                }
                t += 4;
            }
        }
        while t < job.n_tokens {
            for g in g0..g1 {
                tile::<1, VNNI>(p, job, ysum128, g, t);
            }
            t += 1;
        }
    }
}

/// AVX2 kernel: groups `g0..g1` for every token.
///
/// # Safety
/// AVX2, FMA and F16C are available; `g1 <= p.groups`; `job` describes `p`'s matrix (its `rows`,
/// `nb`, `n_tokens` activations) and, as [`Job::set`], no other thread writes these groups' rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn groups_avx2(
    p: &PackedQ8x8,
    job: &Job<BlockQ8>,
    ysum128: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { groups::<false>(p, job, ysum128, g0, g1) }
}

/// AVX-512 VNNI kernel: groups `g0..g1` for every token; `ysum128[t * nb + b] = 128 Σ qs` of
/// token `t`'s block `b`.
///
/// # Safety
/// As [`groups_avx2`], plus AVX-512 F/BW/VL/VNNI are available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn groups_vnni(
    p: &PackedQ8x8,
    job: &Job<BlockQ8>,
    ysum128: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { groups::<true>(p, job, ysum128, g0, g1) }
}
