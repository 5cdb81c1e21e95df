//! x86-64 SIMD helpers and kernels. Everything here is `unsafe` and must only be called after
//! [`crate::Isa::detect`] (or `available`) reported the features the function enables.

pub(crate) mod legacy;
pub(crate) mod packed8;

use std::arch::x86_64::*;

use crate::act::BlockQ8;

/// The f16 at `p` as f32.
///
/// # Safety
/// `p` points at 2 readable bytes; F16C is available.
#[inline(always)]
pub(crate) unsafe fn f16_to_f32(p: *const u8) -> f32 {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// The two consecutive f16 at `p` as f32.
///
/// # Safety
/// `p` points at 4 readable bytes; F16C is available.
#[inline(always)]
pub(crate) unsafe fn f16x2_to_f32(p: *const u8) -> (f32, f32) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let bits = (p as *const u32).read_unaligned();
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }
}

/// 16 bytes of packed nibbles at `p` → 32 bytes: low nibbles first, then high nibbles.
///
/// # Safety
/// `p` points at 16 readable bytes; AVX2 is available.
#[inline(always)]
pub(crate) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let t = _mm_loadu_si128(p as *const __m128i);
        let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
        _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block: the nibbles at `qs` (as [`nibbles_32`]) with bit `j`
/// of the little-endian u32 at `qh` as bit 4 of value `j`.
///
/// # Safety
/// `qs` points at 16 readable bytes, `qh` at 4; AVX2 is available.
#[inline(always)]
pub(crate) unsafe fn nibbles_and_high_bits_32(qs: *const u8, qh: *const u8) -> __m256i {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let bits = (qh as *const u32).read_unaligned() as i32;
        // Byte j gets byte j / 8 of the word (the shuffle stays within each 128-bit lane, and
        // both lanes hold the whole word), then bit j % 8 of it.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
        _mm256_or_si256(
            nibbles_32(qs),
            _mm256_and_si256(set, _mm256_set1_epi8(0x10)),
        )
    }
}

/// Sum of the 8 lanes.
///
/// # Safety
/// AVX is available.
#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Rounds half away from zero exactly like `f32::round`, so the SIMD quantizer is bit-identical
/// to the scalar one (`_mm256_round_ps` alone would round half to even).
///
/// # Safety
/// AVX is available.
#[inline(always)]
unsafe fn round_away(v: __m256) -> __m256 {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let frac = _mm256_sub_ps(v, t); // exact
        let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
        let abs_frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), frac);
        let ge_half = _mm256_cmp_ps(abs_frac, _mm256_set1_ps(0.5), _CMP_GE_OQ);
        let one = _mm256_or_ps(_mm256_set1_ps(1.0), sign);
        _mm256_add_ps(t, _mm256_and_ps(ge_half, one))
    }
}

/// AVX2 version of [`crate::act::quantize_row_q8`], bit-identical to the scalar one.
///
/// # Safety
/// AVX2, FMA and F16C are available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_row_q8_avx2(x: &[f32], out: &mut [BlockQ8]) {
    for (c, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: `c` has 32 floats, read as four unaligned vectors; features per the contract.
        unsafe {
            let p = c.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let abs = _mm256_set1_ps(-0.0);
            let m01 = _mm256_max_ps(_mm256_andnot_ps(abs, v[0]), _mm256_andnot_ps(abs, v[1]));
            let m23 = _mm256_max_ps(_mm256_andnot_ps(abs, v[2]), _mm256_andnot_ps(abs, v[3]));
            let m = _mm256_max_ps(m01, m23);
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let vid = _mm256_set1_ps(id);
            let q: [__m256i; 4] =
                std::array::from_fn(|i| _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[i], vid))));
            // Sum of the 32 integers.
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
            let sum = _mm_cvtsi128_si32(s4);
            // i32 → i8 with ggml's pack/permute sequence (values are within -127..=127).
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let p = _mm256_packs_epi16(p01, p23);
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(o.qs.as_mut_ptr() as *mut __m256i, p);
            o.d = d;
            o.s = d * sum as f32;
        }
    }
}
