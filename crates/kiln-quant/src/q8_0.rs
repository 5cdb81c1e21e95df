//! Q8_0: 32 weights per block, one f16 scale, signed 8-bit values (ggml `block_q8_0`).
//!
//! ```text
//!  byte 0    2                                        34
//!  +---------+----------------------------------------+
//!  | d: f16  | qs: [i8; 32]                           |    w[i] = d * qs[i]
//!  +---------+----------------------------------------+
//! ```
//!
//! Quantization (ggml `quantize_row_q8_0_ref`): `d = amax / 127`, `qs[i] = round(x[i] / d)`
//! (half away from zero), `d` stored as f16.
//!
//! Dot kernels: the SIMD path treats the weights as unsigned (`qs ^ 0x80`, i.e. `qs + 128`) so
//! that they fit `vpmaddubsw`/`vpdpbusd` (unsigned × signed), and corrects with the activation
//! block sum: `Σ qs·y = Σ (qs + 128)·y - 128 Σ y`, which is Q4_1's formula with `m = -128 d`.
//! ggml instead takes `|qs|` and moves the sign onto `y` (`vpsignb`), one more op per pair.

use crate::act::BlockQ8;
use crate::legacy::Legacy;

pub const BLOCK: usize = 32;
pub const BYTES: usize = 34;

/// Reference quantizer, bit-identical to ggml's.
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; BYTES];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    for (o, v) in out[2..].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
    out
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = d * (q as i8) as f32;
    }
}

/// Marker type for the shared 32-block kernels.
pub(crate) struct Q8_0;

impl Legacy for Q8_0 {
    const BYTES: usize = BYTES;
    const SIGNED: bool = true;

    fn dot_block(w: &[u8], a: &BlockQ8) -> f32 {
        let isum: i32 = w[2..BYTES]
            .iter()
            .zip(&a.qs)
            .map(|(&q, &y)| (q as i8) as i32 * y as i32)
            .sum();
        crate::f16_at(w, 0) * a.d * isum as f32
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        (crate::x86::f16_to_f32(p), 0.0)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees `p` points at a whole block (34 bytes).
        _mm256_loadu_si256(p.add(2) as *const __m256i)
    }
}
