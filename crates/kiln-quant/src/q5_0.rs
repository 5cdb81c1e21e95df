//! Q5_0: 32 weights per block, f16 scale, 5-bit values with an offset of 16 (ggml `block_q5_0`).
//!
//! ```text
//!  byte 0    2              6                    22
//!  +---------+--------------+--------------------+
//!  | d: f16  | qh: u32 (LE) | qs: [u8; 16]       |   q[i]      = (qs[i] & 0xF) | bit i of qh << 4
//!  +---------+--------------+--------------------+   q[i + 16] = (qs[i] >> 4) | bit i+16 of qh << 4
//!                                                     w[i] = d * (q[i] - 16)        i in 0..32
//! ```
//!
//! Quantization (ggml `quantize_row_q5_0_ref`): `max` is the value of largest magnitude (with its
//! sign), `d = max / -16`, `q = min(31, (i8)(x / d + 16.5))` (truncation, as in C).
//!
//! Dot with a [`BlockQ8`]: `Σ w·y = d·dy·Σ q·qy − 16d · s`, the shared 32-block kernels' shape
//! (`legacy.rs`) with `m = −16d`. llama.cpp's Q4_K_M and Q5_K_M pick Q5_0 for matrices whose
//! rows are not a multiple of 256 (SmolLM2's 576).

use crate::act::BlockQ8;
use crate::legacy::Legacy;

pub const BLOCK: usize = 32;
pub const BYTES: usize = 22;

/// Reference quantizer, bit-identical to ggml's.
pub fn quantize_block(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; BYTES];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        out[6 + j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
    out
}

/// The 5-bit values of a block (Q5_0 and Q5_1 share the `qh` / `qs` layout at `at`).
pub(crate) fn values(b: &[u8], at: usize) -> [u8; 32] {
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        let byte = b[at + 4 + j];
        q[j] = (byte & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (byte >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

pub fn dequantize_block(b: &[u8; BYTES], out: &mut [f32; BLOCK]) {
    let d = crate::f16_at(b, 0);
    for (o, q) in out.iter_mut().zip(values(b, 2)) {
        *o = d * (q as i32 - 16) as f32;
    }
}

/// Marker type for the shared 32-block kernels.
pub(crate) struct Q5_0;

impl Legacy for Q5_0 {
    const BYTES: usize = BYTES;

    fn dot_block(w: &[u8], a: &BlockQ8) -> f32 {
        let isum: i32 = values(w, 2)
            .iter()
            .zip(&a.qs)
            .map(|(&q, &y)| (q as i32 - 16) * y as i32)
            .sum();
        crate::f16_at(w, 0) * a.d * isum as f32
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: forwarded from this function's contract.
        let d = unsafe { crate::x86::f16_to_f32(p) };
        (d, -16.0 * d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller guarantees `p` points at a whole block (22 bytes) and AVX2.
        unsafe { crate::x86::nibbles_and_high_bits_32(p.add(6), p.add(2)) }
    }
}
