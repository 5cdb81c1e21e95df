//! AVX2 and AVX-512 VNNI kernels for the 32-value formats (see [`crate::legacy`]).
//!
//! Register tiles: `MR` weight rows × 1 or 4 tokens. Each weight block is unpacked once per tile
//! and used against every token of the tile; each activation block is loaded once and used
//! against every row. For 4 tokens the four per-pair `i32x8` dot products of a row are folded
//! with three `vphaddd` into one vector `[t0 t1 t2 t3 | t0 t1 t2 t3]`, so a 4×4 tile needs only
//! 4 float accumulators (AVX2 has 16 registers; 16 accumulators would spill).
//! The rejected alternative, one accumulator per (row, token) as llamafile's tinyBLAS does, needs
//! a convert + scale + FMA per pair instead of per row.

// Index loops over the register tiles read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::act::BlockQ8;
use crate::legacy::Legacy;
use crate::matmul::Job;
use crate::x86::hsum_ps;

/// How far ahead `tile_1` prefetches each weight row.
const PREFETCH: usize = 2048;

/// Unsigned × signed byte dot product of 32 pairs, as eight i32 partial sums.
#[inline(always)]
unsafe fn dot_u8i8<const VNNI: bool>(q: __m256i, y: __m256i) -> __m256i {
    // SAFETY: the caller enabled AVX2 (and AVX-512 VNNI+VL when `VNNI`).
    unsafe {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y)
        } else {
            // No saturation: |q| <= 128 and |y| <= 127, so a pair sum is at most 32512.
            _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1))
        }
    }
}

/// A weight block ready for dot products: bytes for the "unsigned" operand, `d`, `m`.
struct WBlock {
    q: __m256i,
    d: f32,
    m: f32,
}

#[inline(always)]
unsafe fn load_block<F: Legacy, const VNNI: bool>(p: *const u8) -> WBlock {
    // SAFETY: `p` points at a whole block (caller); features as in `dot_u8i8`.
    unsafe {
        let q = F::unpack(p);
        let (d, m) = F::scales(p);
        if F::SIGNED && VNNI {
            // Signed → unsigned by +128; corrected through the activation sum.
            WBlock {
                q: _mm256_xor_si256(q, _mm256_set1_epi8(-128)),
                d,
                m: -128.0 * d,
            }
        } else {
            WBlock { q, d, m }
        }
    }
}

/// Dot of a weight block with one activation vector, handling signed weights on AVX2 the ggml
/// way (`|q|` unsigned, the sign moved onto `y`).
#[inline(always)]
unsafe fn dot_block<F: Legacy, const VNNI: bool>(w: &WBlock, absq: __m256i, y: __m256i) -> __m256i {
    // SAFETY: features as in `dot_u8i8`.
    unsafe {
        if F::SIGNED && !VNNI {
            dot_u8i8::<false>(absq, _mm256_sign_epi8(y, w.q))
        } else {
            dot_u8i8::<VNNI>(w.q, y)
        }
    }
}

#[inline(always)]
unsafe fn abs_if_signed<F: Legacy, const VNNI: bool>(w: &WBlock) -> __m256i {
    // SAFETY: AVX2 enabled by the caller.
    unsafe {
        if F::SIGNED && !VNNI {
            _mm256_sign_epi8(w.q, w.q)
        } else {
            w.q
        }
    }
}

/// `MR` rows from `r`, one token `t`.
///
/// Batch invariance: a token's outputs are bit-identical whether it is computed here or in a
/// 4-token tile, so a sequence's logits do not depend on what else shares its step. The float
/// operations therefore mirror the tile kernels: with VNNI those of `tile_4_pairs` (8-lane
/// accumulator, `m·s` by a scalar FMA); on AVX2 those of `tile_4` (the block's integer sums
/// folded into lane 0 = lanes 0..4 and lane 4 = lanes 4..8 before the convert, `m·s` accumulated
/// into lane 0, the two lanes added at the end).
#[inline(always)]
unsafe fn tile_1<F: Legacy, const MR: usize, const VNNI: bool>(
    job: &Job<BlockQ8>,
    r: usize,
    t: usize,
) {
    let nb = job.nb;
    // SAFETY: `r + MR <= rows`, `t < n_tokens` (caller), so every block pointer below stays in the
    // weight and activation slices, whose sizes `QMatrix::matmul` checked.
    unsafe {
        let a = job.acts.as_ptr().add(t * nb);
        let w = job.w.as_ptr().add(r * job.row_bytes);
        let mut acc = [_mm256_setzero_ps(); MR];
        let mut accm = [0f32; MR];
        for b in 0..nb {
            let ab = &*a.add(b);
            let y = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let s = _mm256_zextps128_ps256(_mm_set_ss(ab.s));
            for i in 0..MR {
                let p = w.add(i * job.row_bytes + b * F::BYTES);
                // Decode streams each weight byte once from DRAM: ask for it ~2 KiB ahead
                // (in-bounds or not, a prefetch never faults).
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                let wb = load_block::<F, VNNI>(p);
                let absq = abs_if_signed::<F, VNNI>(&wb);
                let p = dot_block::<F, VNNI>(&wb, absq, y);
                let scale = _mm256_set1_ps(wb.d * ab.d);
                if VNNI {
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i]);
                    accm[i] = wb.m.mul_add(ab.s, accm[i]);
                } else {
                    let h = _mm256_hadd_epi32(p, p);
                    let h = _mm256_hadd_epi32(h, h);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), scale, acc[i]);
                    if !F::SIGNED {
                        acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(wb.m), s, acc[i]);
                    }
                }
            }
        }
        for i in 0..MR {
            let v = if VNNI {
                hsum_ps(acc[i]) + accm[i]
            } else {
                let lo = _mm256_castps256_ps128(acc[i]);
                let hi = _mm256_extractf128_ps(acc[i], 1);
                _mm_cvtss_f32(_mm_add_ss(lo, hi))
            };
            job.set(t, r + i, v);
        }
    }
}

/// `MR` rows from `r`, four tokens from `t`.
#[inline(always)]
unsafe fn tile_4<F: Legacy, const MR: usize, const VNNI: bool>(
    job: &Job<BlockQ8>,
    r: usize,
    t: usize,
) {
    let nb = job.nb;
    // SAFETY: `r + MR <= rows`, `t + 4 <= n_tokens` (caller); see `tile_1`.
    unsafe {
        let a = job.acts.as_ptr().add(t * nb);
        let w = job.w.as_ptr().add(r * job.row_bytes);
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..nb {
            let ab: [&BlockQ8; 4] = std::array::from_fn(|k| &*a.add(k * nb + b));
            let y: [__m256i; 4] =
                std::array::from_fn(|k| _mm256_loadu_si256(ab[k].qs.as_ptr() as *const __m256i));
            let dy4 = _mm_setr_ps(ab[0].d, ab[1].d, ab[2].d, ab[3].d);
            let dy = _mm256_set_m128(dy4, dy4);
            let s4 = _mm_setr_ps(ab[0].s, ab[1].s, ab[2].s, ab[3].s);
            let s = _mm256_zextps128_ps256(s4);
            for i in 0..MR {
                let wb = load_block::<F, VNNI>(w.add(i * job.row_bytes + b * F::BYTES));
                let absq = abs_if_signed::<F, VNNI>(&wb);
                let p: [__m256i; 4] =
                    std::array::from_fn(|k| dot_block::<F, VNNI>(&wb, absq, y[k]));
                let h =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                let scale = _mm256_mul_ps(_mm256_set1_ps(wb.d), dy);
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), scale, acc[i]);
                if !F::SIGNED || VNNI {
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(wb.m), s, acc[i]);
                }
            }
        }
        for i in 0..MR {
            let v = _mm_add_ps(
                _mm256_castps256_ps128(acc[i]),
                _mm256_extractf128_ps(acc[i], 1),
            );
            let mut o = [0f32; 4];
            _mm_storeu_ps(o.as_mut_ptr(), v);
            for (k, &val) in o.iter().enumerate() {
                job.set(t + k, r + i, val);
            }
        }
    }
}

/// VNNI variant of [`tile_4`]: with AVX-512VL's 32 registers a 4×4 tile keeps one accumulator
/// per (row, token) pair, avoiding `tile_4`'s `vphaddd` shuffles. The FMA/multiply pipes are the
/// bottleneck here (measured: removing one FMA per pair gave +33%), so per pair and block only
/// `vpdpbusd`, a convert and one FMA remain: the 4 scales `d · dy` of a row are computed with one
/// 4-wide multiply and read back as broadcast memory operands, and the `m · s` terms go to a
/// 4-wide accumulator per row (`dy` and `s` of the 4 tokens are one load each from `job.aux`).
#[inline(always)]
unsafe fn tile_4_pairs<F: Legacy, const MR: usize>(job: &Job<BlockQ8>, r: usize, t: usize) {
    let (nb, nt) = (job.nb, job.n_tokens);
    // SAFETY: `r + MR <= rows`, `t + 4 <= n_tokens` (caller); see `tile_1`. `aux` holds
    // `2 * nb * n_tokens` floats (`run_legacy` fills it whenever n_tokens >= 4).
    unsafe {
        let a = job.acts.as_ptr().add(t * nb);
        let w = job.w.as_ptr().add(r * job.row_bytes);
        let (aux_d, aux_s) = (job.aux.as_ptr().add(t), job.aux.as_ptr().add(nb * nt + t));
        let mut acc = [[_mm256_setzero_ps(); 4]; MR];
        let mut accm = [_mm_setzero_ps(); MR];
        let mut sc = [0f32; 16];
        for b in 0..nb {
            let d4 = _mm_loadu_ps(aux_d.add(b * nt));
            let s4 = _mm_loadu_ps(aux_s.add(b * nt));
            let y: [__m256i; 4] = std::array::from_fn(|k| {
                _mm256_loadu_si256((*a.add(k * nb + b)).qs.as_ptr() as *const __m256i)
            });
            for i in 0..MR {
                let wb = load_block::<F, true>(w.add(i * job.row_bytes + b * F::BYTES));
                _mm_storeu_ps(
                    sc.as_mut_ptr().add(4 * i),
                    _mm_mul_ps(_mm_set1_ps(wb.d), d4),
                );
                // Keeps LLVM from forwarding the store through shuffles: reloading each scale as
                // a broadcast memory operand costs no vector ALU op.
                std::hint::black_box(&mut sc);
                accm[i] = _mm_fmadd_ps(_mm_set1_ps(wb.m), s4, accm[i]);
                for k in 0..4 {
                    let p = _mm256_cvtepi32_ps(dot_u8i8::<true>(wb.q, y[k]));
                    acc[i][k] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(&sc[4 * i + k]), acc[i][k]);
                }
            }
        }
        for i in 0..MR {
            let mut m = [0f32; 4];
            _mm_storeu_ps(m.as_mut_ptr(), accm[i]);
            for k in 0..4 {
                job.set(t + k, r + i, hsum_ps(acc[i][k]) + m[k]);
            }
        }
    }
}

/// Output rows `r0..r1` for every token: token tiles outer so the rows' weights stay in cache.
#[inline(always)]
unsafe fn chunk<F: Legacy, const VNNI: bool>(job: &Job<BlockQ8>, r0: usize, r1: usize) {
    // SAFETY: the tiles below cover rows r0..r1 and tokens 0..n_tokens exactly (caller contract).
    unsafe {
        let mut t = 0;
        while t + 4 <= job.n_tokens {
            let mut r = r0;
            while r + 4 <= r1 {
                if VNNI {
                    tile_4_pairs::<F, 4>(job, r, t);
                } else {
                    tile_4::<F, 4, VNNI>(job, r, t);
                }
                r += 4;
            }
            while r < r1 {
                if VNNI {
                    tile_4_pairs::<F, 1>(job, r, t);
                } else {
                    tile_4::<F, 1, VNNI>(job, r, t);
                }
                r += 1;
            }
            t += 4;
        }
        while t < job.n_tokens {
            let mut r = r0;
            while r + 4 <= r1 {
                tile_1::<F, 4, VNNI>(job, r, t);
                r += 4;
            }
            while r < r1 {
                tile_1::<F, 1, VNNI>(job, r, t);
                r += 1;
            }
            t += 1;
        }
    }
}

/// AVX2 kernel: output rows `r0..r1` for every token.
///
/// # Safety
/// AVX2, FMA and F16C are available; as [`Job::set`] for rows `r0..r1`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn chunk_avx2<F: Legacy>(job: &Job<BlockQ8>, r0: usize, r1: usize) {
    // SAFETY: forwarded from this function's contract.
    unsafe { chunk::<F, false>(job, r0, r1) }
}

/// AVX-512 VNNI kernel (256-bit `vpdpbusd`, 32 registers): output rows `r0..r1` for every token.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI are available; as [`Job::set`] for rows `r0..r1`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn chunk_vnni<F: Legacy>(job: &Job<BlockQ8>, r0: usize, r1: usize) {
    // SAFETY: forwarded from this function's contract.
    unsafe { chunk::<F, true>(job, r0, r1) }
}
