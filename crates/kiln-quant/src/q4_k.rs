//! Q4_K: 256 weights per super-block, 8 sub-blocks of 32 with 6-bit scales and mins
//! (ggml `block_q4_K`).
//!
//! ```text
//!  byte 0        2           4                 16                                  144
//!  +-------------+-----------+-----------------+-----------------------------------+
//!  | d: f16      | dmin: f16 | scales: [u8;12] | qs: [u8; 128]                     |
//!  +-------------+-----------+-----------------+-----------------------------------+
//!  scales: 8 (sc, m) pairs of 6 bits. j < 4: sc = s[j] & 63, m = s[j+4] & 63
//!          j >= 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4,  m = (s[j+4] >> 4) | (s[j] >> 6) << 4
//!  qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in its low nibbles and 2c+1 in its high
//!  w = d * sc_j * q - dmin * m_j
//! ```
//!
//! The quantizer here is a plain min/max fit per sub-block (ggml's `make_qkx2_quants` searches
//! better scales); it exists to make test and benchmark data.

use crate::act::BlockQ8K;

pub const BLOCK: usize = 256;
pub const BYTES: usize = 144;

/// Sub-block `j`'s 6-bit (scale, min) from the 12 packed bytes (ggml `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Simple reference quantizer (min/max per sub-block, 6-bit scales relative to the largest).
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let mut scale = [0f32; 8];
    let mut minv = [0f32; 8]; // stored as a positive offset: w = scale * q - minv
    for j in 0..8 {
        let sub = &x[32 * j..32 * j + 32];
        let lo = sub.iter().fold(f32::MAX, |a, &v| a.min(v)).min(0.0);
        let hi = sub.iter().fold(-f32::MAX, |a, &v| a.max(v));
        scale[j] = (hi - lo) / 15.0;
        minv[j] = -lo;
    }
    let max_scale = scale.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = minv.iter().fold(0f32, |a, &v| a.max(v));
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = if df > 0.0 {
            (scale[j] / df).round().min(63.0) as u8
        } else {
            0
        };
        m[j] = if dminf > 0.0 {
            (minv[j] / dminf).round().min(63.0) as u8
        } else {
            0
        };
    }
    let mut out = [0u8; BYTES];
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    let s = &mut out[4..16];
    for j in 0..8 {
        if j < 4 {
            s[j] = sc[j];
            s[j + 4] = m[j];
        } else {
            s[j + 4] = (sc[j] & 0xF) | ((m[j] & 0xF) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (m[j] >> 4) << 6;
        }
    }
    for j in 0..8 {
        let step = df * sc[j] as f32;
        let off = dminf * m[j] as f32;
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        for l in 0..32 {
            let q = ((x[32 * j + l] + off) * inv).round().clamp(0.0, 15.0) as u8;
            out[16 + 32 * (j / 2) + l] |= if j % 2 == 0 { q } else { q << 4 };
        }
    }
    out
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 0);
    let dmin = crate::f16_at(b, 2);
    let s = &b[4..16];
    for j in 0..8 {
        let (sc, m) = scale_min(j, s);
        let (step, off) = (d * sc as f32, dmin * m as f32);
        for l in 0..32 {
            let byte = b[16 + 32 * (j / 2) + l];
            let q = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
            out[32 * j + l] = step * q as f32 - off;
        }
    }
}

/// Reference dot product of one weight row (`w.len() == nb * BYTES`) with its activations.
pub(crate) fn dot_row(w: &[u8], a: &[BlockQ8K]) -> f32 {
    w.chunks_exact(BYTES)
        .zip(a)
        .map(|(w, a)| dot_block(w, a))
        .sum()
}

fn dot_block(w: &[u8], a: &BlockQ8K) -> f32 {
    let d = crate::f16_at(w, 0) * a.d;
    let dmin = crate::f16_at(w, 2) * a.d;
    let (s, qs) = (&w[4..16], &w[16..BYTES]);
    let (mut isum, mut msum) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min(j, s);
        let mut dot = 0i32;
        for l in 0..32 {
            let byte = qs[32 * (j / 2) + l];
            let q = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
            dot += q as i32 * a.qs[32 * j + l] as i32;
        }
        isum += sc as i32 * dot;
        msum += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
    }
    d * isum as f32 - dmin * msum as f32
}

/// The AVX2 row kernel, if this target has one.
#[cfg(target_arch = "x86_64")]
pub(crate) const DOT_AVX2: Option<crate::matmul::RowDot<BlockQ8K>> = Some(dot_row_avx2);
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const DOT_AVX2: Option<crate::matmul::RowDot<BlockQ8K>> = None;

/// The AVX2 four-token row kernel, if this target has one.
#[cfg(target_arch = "x86_64")]
pub(crate) const DOT4_AVX2: Option<crate::matmul::RowDot4<BlockQ8K>> = Some(dot_row4_avx2);
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const DOT4_AVX2: Option<crate::matmul::RowDot4<BlockQ8K>> = None;

/// The 12 scale bytes at `p` rearranged as 8 scales then 8 mins, one byte each (ggml's
/// `utmp` shuffle), widened to 16 bits: `[sc0..sc7 | m0..m7]`.
///
/// # Safety
/// `p` points at 12 readable bytes; AVX2 is available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn mins_and_scales(p: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let sp = p as *const u32;
        let mut u = [
            sp.read_unaligned(),
            sp.add(1).read_unaligned(),
            sp.add(2).read_unaligned(),
            0u32,
        ];
        u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
        let uaux = u[1] & KMASK1;
        u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
        u[2] = uaux;
        u[0] &= KMASK1;
        _mm256_cvtepu8_epi16(_mm_set_epi32(
            u[3] as i32,
            u[2] as i32,
            u[1] as i32,
            u[0] as i32,
        ))
    }
}

/// AVX2 dot products of one weight row with four tokens' activations: the prefill kernel.
/// Scales, mins and nibbles of each weight block are unpacked once for the four tokens.
///
/// # Safety
/// AVX2, FMA and F16C are available; every `a[k]` has the same length and
/// `w.len() >= a[k].len() * BYTES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn dot_row4_avx2(w: &[u8], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    // SAFETY: every read is inside block `i` of `w` or inside `a[k][i]` (contract); the
    // features are enabled by the contract.
    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_m = [_mm_setzero_ps(); 4];
        for i in 0..a[0].len() {
            let p = w.as_ptr().add(i * BYTES);
            let (xd, xdmin) = crate::x86::f16x2_to_f32(p);
            let ms = mins_and_scales(p.add(4));
            let mins = _mm256_extracti128_si256(ms, 1);
            let sc128 = _mm256_castsi256_si128(ms);
            let scales = _mm256_set_m128i(sc128, sc128);
            let ab: [&BlockQ8K; 4] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
            for k in 0..4 {
                let q8sums = _mm256_loadu_si256(ab[k].bsums.as_ptr() as *const __m256i);
                let q8s = _mm_hadd_epi16(
                    _mm256_castsi256_si128(q8sums),
                    _mm256_extracti128_si256(q8sums, 1),
                );
                let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, q8s));
                acc_m[k] = _mm_fmadd_ps(_mm_set1_ps(-ab[k].d * xdmin), prod, acc_m[k]);
            }
            let mut sumi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let scale_l = _mm256_shuffle_epi8(
                    scales,
                    _mm256_set1_epi16((((4 * j + 1) << 8) | (4 * j)) as i16),
                );
                let scale_h = _mm256_shuffle_epi8(
                    scales,
                    _mm256_set1_epi16((((4 * j + 3) << 8) | (4 * j + 2)) as i16),
                );
                let q4bits = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                for k in 0..4 {
                    let q8 = ab[k].qs.as_ptr();
                    let q8l = _mm256_loadu_si256(q8.add(64 * j) as *const __m256i);
                    let q8h = _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i);
                    let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                    let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p16l, p16h));
                }
            }
            for k in 0..4 {
                acc[k] = _mm256_fmadd_ps(
                    _mm256_set1_ps(ab[k].d * xd),
                    _mm256_cvtepi32_ps(sumi[k]),
                    acc[k],
                );
            }
        }
        std::array::from_fn(|k| {
            let m = _mm_add_ps(acc_m[k], _mm_movehl_ps(acc_m[k], acc_m[k]));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            crate::x86::hsum_ps(acc[k]) + _mm_cvtss_f32(m)
        })
    }
}

/// AVX2 dot product of one weight row with its activations (ggml `ggml_vec_dot_q4_K_q8_K`).
///
/// # Safety
/// AVX2, FMA and F16C are available; `w.len() >= a.len() * BYTES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_row_avx2(w: &[u8], a: &[BlockQ8K]) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: every read is inside block `i` of `w` (BYTES bytes, checked by the contract) or
    // inside `a[i]`; the features are enabled by the contract.
    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (i, ab) in a.iter().enumerate() {
            let p = w.as_ptr().add(i * BYTES);
            // Decode streams the weights from DRAM once: prefetch well ahead (never faults).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2048) as *const i8);
            let (xd, xdmin) = crate::x86::f16x2_to_f32(p);
            let d = ab.d * xd;
            let dmin = -ab.d * xdmin;
            let mins_and_scales = mins_and_scales(p.add(4));
            // Σ m_j * (bsum_2j + bsum_2j+1)
            let q8sums = _mm256_loadu_si256(ab.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_castsi256_si128(q8sums),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
            let sc128 = _mm256_castsi256_si128(mins_and_scales);
            let scales = _mm256_set_m128i(sc128, sc128);
            let mut sumi = _mm256_setzero_si256();
            let q4 = p.add(16);
            let q8 = ab.qs.as_ptr();
            for j in 0..4 {
                // Broadcast the 16-bit scales of sub-blocks 2j and 2j+1.
                let scale_l = _mm256_shuffle_epi8(
                    scales,
                    _mm256_set1_epi16((((4 * j + 1) << 8) | (4 * j)) as i16),
                );
                let scale_h = _mm256_shuffle_epi8(
                    scales,
                    _mm256_set1_epi16((((4 * j + 3) << 8) | (4 * j + 2)) as i16),
                );
                let q4bits = _mm256_loadu_si256(q4.add(32 * j) as *const __m256i);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                let q8l = _mm256_loadu_si256(q8.add(64 * j) as *const __m256i);
                let q8h = _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i);
                let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
        crate::x86::hsum_ps(acc) + _mm_cvtss_f32(acc_m)
    }
}
