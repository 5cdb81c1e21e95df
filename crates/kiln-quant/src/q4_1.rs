//! Q4_1: 32 weights per block, f16 scale and minimum, 4-bit unsigned values (ggml `block_q4_1`).
//!
//! ```text
//!  byte 0    2         4                    20
//!  +---------+---------+--------------------+
//!  | d: f16  | m: f16  | qs: [u8; 16]       |   w[i]      = d * (qs[i] & 0xF) + m   i in 0..16
//!  +---------+---------+--------------------+   w[i + 16] = d * (qs[i] >> 4) + m
//! ```
//!
//! Quantization (ggml `quantize_row_q4_1_ref`): `m = min`, `d = (max - min) / 15`,
//! `q = min(15, (i8)((x - m) / d + 0.5))` (truncation, as in C).
//!
//! Dot with a [`BlockQ8`] `y ≈ dy * qy`: `Σ w·y = d·dy Σ q·qy + m · (dy Σ qy) = d·dy·isum + m·s`,
//! so the inner loop is one unsigned × signed byte dot product per block.

use crate::act::BlockQ8;
use crate::legacy::Legacy;

pub const BLOCK: usize = 32;
pub const BYTES: usize = 20;

/// Reference quantizer, bit-identical to ggml's.
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; BYTES];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    out[2..4].copy_from_slice(&half::f16::from_f32(min).to_le_bytes());
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        out[4 + j] = q0 | (q1 << 4);
    }
    out
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 0);
    let m = crate::f16_at(b, 2);
    for j in 0..16 {
        out[j] = d * (b[4 + j] & 0xF) as f32 + m;
        out[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
    }
}

/// Marker type for the shared 32-block kernels.
pub(crate) struct Q4_1;

impl Legacy for Q4_1 {
    const BYTES: usize = BYTES;

    fn dot_block(w: &[u8], a: &BlockQ8) -> f32 {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (w[4 + j] & 0xF) as i32 * a.qs[j] as i32;
            isum += (w[4 + j] >> 4) as i32 * a.qs[j + 16] as i32;
        }
        crate::f16_at(w, 0) * a.d * isum as f32 + crate::f16_at(w, 2) * a.s
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        crate::x86::f16x2_to_f32(p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller guarantees `p` points at a whole block (20 bytes).
        crate::x86::nibbles_32(p.add(4))
    }
}
