//! Q4_0: 32 weights per block, one f16 scale, 4-bit values offset by 8 (ggml `block_q4_0`).
//!
//! ```text
//!  byte 0    2                    18
//!  +---------+--------------------+
//!  | d: f16  | qs: [u8; 16]       |    w[i]      = d * ((qs[i] & 0xF) - 8)   i in 0..16
//!  +---------+--------------------+    w[i + 16] = d * ((qs[i] >> 4) - 8)
//! ```
//!
//! Quantization (ggml `quantize_row_q4_0_ref`): `max` is the value of largest magnitude (with its
//! sign), `d = max / -8`, `q = min(15, (i8)(x / d + 8.5))` (truncation, as in C).
//!
//! Dot kernels: the nibbles are unsigned 0..15, and `Σ (q - 8)·d·y = d Σ q·y + m Σ y` with
//! `m = -8 d`, so Q4_0 shares Q4_1's kernels.

use crate::act::BlockQ8;
use crate::legacy::Legacy;

pub const BLOCK: usize = 32;
pub const BYTES: usize = 18;

/// Reference quantizer, bit-identical to ggml's.
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; BYTES];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    for j in 0..16 {
        // `as i8` saturates where C's (int8_t) cast of an in-range float truncates: identical for
        // the range 0.5..=16.5 these values take.
        let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        out[2 + j] = q0 | (q1 << 4);
    }
    out
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 0);
    for j in 0..16 {
        out[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
        out[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
    }
}

/// Marker type for the shared 32-block kernels.
pub(crate) struct Q4_0;

impl Legacy for Q4_0 {
    const BYTES: usize = BYTES;

    fn dot_block(w: &[u8], a: &BlockQ8) -> f32 {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += ((w[2 + j] & 0xF) as i32 - 8) * a.qs[j] as i32;
            isum += ((w[2 + j] >> 4) as i32 - 8) * a.qs[j + 16] as i32;
        }
        crate::f16_at(w, 0) * a.d * isum as f32
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        let d = crate::x86::f16_to_f32(p);
        (d, -8.0 * d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller guarantees `p` points at a whole block (18 bytes).
        crate::x86::nibbles_32(p.add(2))
    }
}
