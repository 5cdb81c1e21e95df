//! AVX2 and AVX-512 VNNI kernels over the packed layout ([`crate::packed8`]).
//!
//! A tile is one group of 8 rows × `KT` tokens. Per block column the group's quants become 8
//! vectors `w[j]` (lane `i` = row `i`'s quants `4j..4j+4`; Q4 vectors are unpacked from 4 loads
//! with a mask and a shift) once per tile; then per token the 8 rows' integer dot products
//! accumulate lane-wise in one vector, `Σ_j w[j] · broadcast(y[4j..4j+4])`, followed by one
//! convert, one multiply (the 8 row scales times the token's) and one FMA for all 8 rows (Q4_1:
//! one more FMA for the minimums, `m · s`, into a second accumulator).
//!
//! VNNI does the dot with `vpdpbusd` on the unsigned quants and subtracts `bias Σ y` (Q8_0: 128,
//! Q4_0: 8). AVX2 uses `vpmaddubsw`: for Q4 the 8 i16 pair sums of a block stay below 2^15
//! (8 · 2 · 15 · 127) and are widened once; Q8_0's biased quants would overflow it, so AVX2
//! unbiases them, takes `|q|` and moves the sign onto `y` as ggml does.
//!
//! Batch invariance: a token's float operations are the same in every tile width (integer sums
//! are exact), so its outputs are bit-identical alone or packed with other tokens.

// The token loop indexes the accumulators and the activations together.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::act::BlockQ8;
use crate::matmul::Job;
use crate::packed8::{Kind, Packed8, GROUP};

/// How far ahead (bytes) the weight stream is prefetched: about four Q8_0 block columns.
const PREFETCH: usize = 1024;

/// Tokens per tile where enough registers are free (VNNI's 32; AVX2 reloads weights from L1).
const KT: usize = 4;

/// The 8 quant vectors of one group and block column at `q` (see the module doc).
#[inline(always)]
unsafe fn weights<const Q8: bool>(q: *const __m256i) -> [__m256i; 8] {
    // SAFETY: `q` points at the block column's `Kind::vectors()` aligned vectors (caller); AVX2
    // is enabled by the callers.
    unsafe {
        if Q8 {
            std::array::from_fn(|j| _mm256_load_si256(q.add(j)))
        } else {
            let raw: [__m256i; 4] = std::array::from_fn(|j| _mm256_load_si256(q.add(j)));
            let mask = _mm256_set1_epi8(0x0F);
            std::array::from_fn(|j| {
                if j < 4 {
                    _mm256_and_si256(raw[j], mask)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(raw[j - 4], 4), mask)
                }
            })
        }
    }
}

/// Lane `i`: row `i`'s integer dot product with the token's 32 quants at `y` — still biased
/// where the caller corrects it (VNNI, and Q4_0 on AVX2), exact otherwise.
#[inline(always)]
unsafe fn dot<const Q8: bool, const VNNI: bool>(w: &[__m256i; 8], y: *const i8) -> __m256i {
    // SAFETY: `y` points at 32 readable bytes (caller); features as enabled by the callers.
    unsafe {
        let yb = |j: usize| _mm256_set1_epi32((y.add(4 * j) as *const i32).read_unaligned());
        if VNNI {
            let mut s = _mm256_setzero_si256();
            for j in 0..8 {
                s = _mm256_dpbusd_epi32(s, w[j], yb(j));
            }
            s
        } else if Q8 {
            let ones = _mm256_set1_epi16(1);
            let mut s = _mm256_setzero_si256();
            for j in 0..8 {
                let q = _mm256_xor_si256(w[j], _mm256_set1_epi8(-128));
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yb(j), q));
                s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
            }
            s
        } else {
            let mut s16 = _mm256_setzero_si256();
            for j in 0..8 {
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[j], yb(j)));
            }
            _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
        }
    }
}

/// Group `g` × tokens `t .. t + N`.
#[inline(always)]
unsafe fn tile<const N: usize, const Q8: bool, const MIN: bool, const VNNI: bool>(
    p: &Packed8,
    job: &Job<BlockQ8>,
    ysum: &[i32],
    g: usize,
    t: usize,
) {
    let (nb, nv) = (p.nb, p.kind.vectors());
    // Q8_0 on AVX2 computes the signed dot directly; every other case subtracts `bias Σ y`.
    let bias = p.kind.bias();
    let correct = bias != 0 && (VNNI || !Q8);
    // SAFETY: `g < p.groups` and `t + N <= n_tokens` (caller), so every quant/scale index below
    // is inside the planes (`groups * nb * vectors` and `groups * nb * 8` entries) and every
    // activation index inside `acts` and, when `correct` (a biased format),
    // inside `ysum` (`n_tokens * nb` entries each).
    unsafe {
        let q = p.qs.as_ptr().add(g * nb * nv) as *const __m256i;
        let d = p.d.as_ptr().add(g * nb * GROUP);
        let m = p.m.as_ptr().wrapping_add(g * nb * GROUP);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let qb = q.add(b * nv);
            for l in 0..nv / 2 {
                _mm_prefetch::<_MM_HINT_T0>((qb as *const i8).wrapping_add(PREFETCH + 64 * l));
            }
            let w = weights::<Q8>(qb);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(b * GROUP) as *const __m128i));
            let mw = if MIN {
                _mm256_cvtph_ps(_mm_loadu_si128(m.add(b * GROUP) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for k in 0..N {
                let a = &*job.acts.as_ptr().add((t + k) * nb + b);
                let mut s = dot::<Q8, VNNI>(&w, a.qs.as_ptr());
                if correct {
                    let y = *ysum.get_unchecked((t + k) * nb + b);
                    s = _mm256_sub_epi32(s, _mm256_set1_epi32(bias * y));
                }
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
                if MIN {
                    accm[k] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a.s), accm[k]);
                }
            }
        }
        let r0 = g * GROUP;
        let n_rows = GROUP.min(job.rows - r0);
        for k in 0..N {
            let sum = if MIN {
                _mm256_add_ps(acc[k], accm[k])
            } else {
                acc[k]
            };
            let mut v = [0f32; GROUP];
            _mm256_storeu_ps(v.as_mut_ptr(), sum);
            for (i, &x) in v.iter().enumerate().take(n_rows) {
                job.set(t + k, r0 + i, x);
            }
        }
    }
}

/// Groups `g0..g1` × every token: token tiles outer, so the groups' weights stay in cache while
/// the tokens pass.
#[inline(always)]
unsafe fn groups<const Q8: bool, const MIN: bool, const VNNI: bool>(
    p: &Packed8,
    job: &Job<BlockQ8>,
    ysum: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: the tiles cover groups g0..g1 (within `p.groups`) and tokens 0..n_tokens exactly.
    unsafe {
        let mut t = 0;
        while t + KT <= job.n_tokens {
            for g in g0..g1 {
                tile::<KT, Q8, MIN, VNNI>(p, job, ysum, g, t);
            }
            t += KT;
        }
        while t < job.n_tokens {
            for g in g0..g1 {
                tile::<1, Q8, MIN, VNNI>(p, job, ysum, g, t);
            }
            t += 1;
        }
    }
}

#[inline(always)]
unsafe fn dispatch<const VNNI: bool>(
    p: &Packed8,
    job: &Job<BlockQ8>,
    ysum: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: forwarded from the callers' contracts.
    unsafe {
        match p.kind {
            Kind::Q8_0 => groups::<true, false, VNNI>(p, job, ysum, g0, g1),
            Kind::Q4_0 => groups::<false, false, VNNI>(p, job, ysum, g0, g1),
            Kind::Q4_1 => groups::<false, true, VNNI>(p, job, ysum, g0, g1),
        }
    }
}

/// AVX2 kernel: groups `g0..g1` for every token; `ysum[t * nb + b] = Σ qs` of token `t`'s
/// block `b` (the kernels subtract `bias Σ qs`, see [`Kind::bias`]).
///
/// # Safety
/// AVX2, FMA and F16C are available; `g1 <= p.groups`; `job` describes `p`'s matrix (its `rows`,
/// `nb`, `n_tokens` activations), `ysum` has `n_tokens * nb` entries if the format has a bias, and,
/// as [`Job::set`], no other thread writes these groups' rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn groups_avx2(
    p: &Packed8,
    job: &Job<BlockQ8>,
    ysum: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { dispatch::<false>(p, job, ysum, g0, g1) }
}

/// AVX-512 VNNI kernel (256-bit `vpdpbusd`, 32 registers): as [`groups_avx2`].
///
/// # Safety
/// As [`groups_avx2`], plus AVX-512 F/BW/VL/VNNI are available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn groups_vnni(
    p: &Packed8,
    job: &Job<BlockQ8>,
    ysum: &[i32],
    g0: usize,
    g1: usize,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { dispatch::<true>(p, job, ysum, g0, g1) }
}
