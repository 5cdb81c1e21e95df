//! Q6_K: 256 weights per super-block, 16 sub-blocks of 16 with signed 8-bit scales, 6-bit values
//! (ggml `block_q6_K`).
//!
//! ```text
//!  byte 0                    128               192                208      210
//!  +-------------------------+-----------------+------------------+--------+
//!  | ql: [u8; 128] low 4 bits| qh: [u8; 64]    | scales: [i8; 16] | d: f16 |
//!  +-------------------------+-----------------+------------------+--------+
//!  per half n (128 values; ql += 64n, qh += 32n), l in 0..32:
//!    q[l]      = ql[l]      & 15 | (qh[l] >> 0 & 3) << 4     q[l + 64] = ql[l]      >> 4 | (qh[l] >> 4 & 3) << 4
//!    q[l + 32] = ql[l + 32] & 15 | (qh[l] >> 2 & 3) << 4     q[l + 96] = ql[l + 32] >> 4 | (qh[l] >> 6 & 3) << 4
//!  w[i] = d * scales[i / 16] * (q[i] - 32)
//! ```
//!
//! The quantizer here is a plain absmax fit per sub-block (ggml's `make_qx_quants` searches
//! better scales); it exists to make test and benchmark data.

use crate::act::BlockQ8K;

pub const BLOCK: usize = 256;
pub const BYTES: usize = 210;

/// The 6-bit value (0..64) at position `i` of the block.
#[inline(always)]
fn q_at(b: &[u8], i: usize) -> u8 {
    let (n, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let ql = &b[64 * n..];
    let qh = b[128 + 32 * n + l];
    let low = match quarter {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    low | (((qh >> (2 * quarter)) & 3) << 4)
}

/// Simple reference quantizer (absmax per sub-block of 16, 8-bit scales relative to the largest).
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let mut scale = [0f32; 16];
    for (j, s) in scale.iter_mut().enumerate() {
        *s = x[16 * j..16 * j + 16]
            .iter()
            .fold(0f32, |a, &v| a.max(v.abs()))
            / 31.0;
    }
    let max_scale = scale.iter().fold(0f32, |a, &v| a.max(v));
    let d = half::f16::from_f32(max_scale / 127.0);
    let df = d.to_f32();
    let mut out = [0u8; BYTES];
    let mut q = [0u8; BLOCK];
    for j in 0..16 {
        let sc = if df > 0.0 {
            (scale[j] / df).round().min(127.0) as i8
        } else {
            0
        };
        out[192 + j] = sc as u8;
        let step = df * sc as f32;
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        for l in 0..16 {
            q[16 * j + l] = ((x[16 * j + l] * inv).round().clamp(-32.0, 31.0) + 32.0) as u8;
        }
    }
    for n in 0..2 {
        for l in 0..32 {
            let base = 128 * n + l;
            let (q1, q2, q3, q4) = (q[base], q[base + 32], q[base + 64], q[base + 96]);
            out[64 * n + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            out[64 * n + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            out[128 + 32 * n + l] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out[208..210].copy_from_slice(&d.to_le_bytes());
    out
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 208);
    for (i, o) in out.iter_mut().enumerate() {
        *o = d * (b[192 + i / 16] as i8) as f32 * (q_at(b, i) as i32 - 32) as f32;
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
    let mut isum = 0i32;
    for j in 0..16 {
        let mut dot = 0i32;
        for l in 0..16 {
            let i = 16 * j + l;
            dot += (q_at(w, i) as i32 - 32) * a.qs[i] as i32;
        }
        isum += (w[192 + j] as i8) as i32 * dot;
    }
    crate::f16_at(w, 208) * a.d * isum as f32
}

/// The AVX2 row kernel, if this target has one.
#[cfg(target_arch = "x86_64")]
pub(crate) const DOT_AVX2: Option<crate::matmul::RowDot<BlockQ8K>> = Some(dot_row_avx2);
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const DOT_AVX2: Option<crate::matmul::RowDot<BlockQ8K>> = None;

/// AVX2 dot product of one weight row with its activations (ggml `ggml_vec_dot_q6_K_q8_K`).
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
        let m2 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for (i, ab) in a.iter().enumerate() {
            let p = w.as_ptr().add(i * BYTES);
            // Decode streams the weights from DRAM once: prefetch well ahead (never faults).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2048) as *const i8);
            let d = ab.d * crate::x86::f16_to_f32(p.add(208));
            let scales = _mm_loadu_si128(p.add(192) as *const __m128i);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let ql = p.add(64 * n);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
                let q8 = ab.qs.as_ptr().add(128 * n);
                // High 2 bits of the four quarters, moved to bits 4..6.
                let h = [
                    _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
                ];
                let bits1 = _mm256_loadu_si256(ql as *const __m256i);
                let bits2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                let q6 = [
                    _mm256_or_si256(_mm256_and_si256(bits1, m4), h[0]),
                    _mm256_or_si256(_mm256_and_si256(bits2, m4), h[1]),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits1, 4), m4), h[2]),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits2, 4), m4), h[3]),
                ];
                for (k, &q) in q6.iter().enumerate() {
                    let y = _mm256_loadu_si256(q8.add(32 * k) as *const __m256i);
                    // (q - 32)·y = q·y - 32·y, both through vpmaddubsw (q and 32 unsigned).
                    let p16 =
                        _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(m32s, y));
                    // Scales of sub-blocks 8n + 2k and 8n + 2k + 1, 8 copies each, as i16.
                    let s = 8 * n + 2 * k;
                    let shuf = _mm_setr_epi8(
                        s as i8,
                        s as i8,
                        s as i8,
                        s as i8,
                        s as i8,
                        s as i8,
                        s as i8,
                        s as i8,
                        s as i8 + 1,
                        s as i8 + 1,
                        s as i8 + 1,
                        s as i8 + 1,
                        s as i8 + 1,
                        s as i8 + 1,
                        s as i8 + 1,
                        s as i8 + 1,
                    );
                    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p16));
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        crate::x86::hsum_ps(acc)
    }
}
