//! Q5_1: 32 weights per block, f16 scale and minimum, 5-bit unsigned values (ggml `block_q5_1`).
//!
//! ```text
//!  byte 0    2         4              8                    24
//!  +---------+---------+--------------+--------------------+
//!  | d: f16  | m: f16  | qh: u32 (LE) | qs: [u8; 16]       |   q as in Q5_0 (`q5_0.rs`)
//!  +---------+---------+--------------+--------------------+   w[i] = d * q[i] + m
//! ```
//!
//! Quantization (ggml `quantize_row_q5_1_ref`): `m = min`, `d = (max - min) / 31`,
//! `q = (u8)((x - m) / d + 0.5)` (truncation, as in C).
//!
//! Dot with a [`BlockQ8`]: `Σ w·y = d·dy·Σ q·qy + m·s`, as Q4_1.

use crate::act::BlockQ8;
use crate::legacy::Legacy;
use crate::q5_0::values;

pub const BLOCK: usize = 32;
pub const BYTES: usize = 24;

/// Reference quantizer, bit-identical to ggml's.
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; BYTES];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    out[2..4].copy_from_slice(&half::f16::from_f32(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] - min) * id + 0.5) as u8;
        let q1 = ((x[j + 16] - min) * id + 0.5) as u8;
        out[8 + j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    out[4..8].copy_from_slice(&qh.to_le_bytes());
    out
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 0);
    let m = crate::f16_at(b, 2);
    for (o, q) in out.iter_mut().zip(values(b, 4)) {
        *o = d * q as f32 + m;
    }
}

/// Marker type for the shared 32-block kernels.
pub(crate) struct Q5_1;

impl Legacy for Q5_1 {
    const BYTES: usize = BYTES;

    fn dot_block(w: &[u8], a: &BlockQ8) -> f32 {
        let isum: i32 = values(w, 4)
            .iter()
            .zip(&a.qs)
            .map(|(&q, &y)| q as i32 * y as i32)
            .sum();
        crate::f16_at(w, 0) * a.d * isum as f32 + crate::f16_at(w, 2) * a.s
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: forwarded from this function's contract.
        unsafe { crate::x86::f16x2_to_f32(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller guarantees `p` points at a whole block (24 bytes) and AVX2.
        unsafe { crate::x86::nibbles_and_high_bits_32(p.add(8), p.add(4)) }
    }
}
