//! Activation quantization: the 8-bit formats the weight blocks are multiplied against.
//!
//! Like llama.cpp, a matmul first quantizes each token row of the activations once, then does
//! integer dot products against every weight row. Two formats, internal to the crate (so they
//! are not byte-compatible with ggml's Q8_1/Q8_K and need not be):
//!
//! ```text
//! BlockQ8 (32 values, for Q4_0 / Q4_1 / Q8_0 weights; like ggml's Q8_1 with f32 scales)
//! +--------+--------+-----------------------------+
//! | d: f32 | s: f32 | qs: [i8; 32]                |   x[i] ≈ d * qs[i],  s = d * Σ qs[i]
//! +--------+--------+-----------------------------+
//!
//! BlockQ8K (256 values, for Q4_K / Q6_K weights; ggml's Q8_K)
//! +--------+-------------------------+--------------------+
//! | d: f32 | qs: [i8; 256]           | bsums: [i16; 16]   |  bsums[j] = Σ qs[16j..16j+16]
//! +--------+-------------------------+--------------------+
//! ```
//!
//! `s` lets the Q4_1 kernel add the block minimum `m * Σx` without touching the values again;
//! Q4_0 and Q8_0 reuse it too (their kernels treat the weights as unsigned with `m = -8d`/`-128d`).
//! Deviation from ggml: `d` and `s` stay f32 instead of being rounded to f16 (slightly more
//! accurate, same speed).

/// 32 activations quantized to i8 with one scale, plus the scaled sum (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// 256 activations quantized to i8 with one scale and sums of each 16 (see the module doc).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Quantizes one block as ggml's `quantize_row_q8_1_ref` does (round half away from zero).
pub fn quantize_q8(x: &[f32; 32]) -> BlockQ8 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    BlockQ8 {
        d,
        s: d * sum as f32,
        qs,
    }
}

/// Quantizes one 256-block symmetrically (`d = amax / 127`, like ggml's Q8_K up to the sign
/// convention of the scale).
pub fn quantize_q8k(x: &[f32; 256]) -> BlockQ8K {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ8K {
        d,
        ..Default::default()
    };
    for (q, v) in b.qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| v as i16).sum();
    }
    b
}

/// Quantizes a row (length a multiple of 32) into `out` (one block per 32 values).
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    quantize_row_q8_isa(crate::Isa::detect(), x, out)
}

/// [`quantize_row_q8`] with a given instruction set, which must be available.
pub(crate) fn quantize_row_q8_isa(isa: crate::Isa, x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= crate::Isa::Avx2 {
        // SAFETY: Avx2 or better is only available after avx2, fma and f16c were detected.
        unsafe { crate::x86::quantize_row_q8_avx2(x, out) };
        return;
    }
    for (c, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        if let Ok(c) = <&[f32; 32]>::try_from(c) {
            *o = quantize_q8(c);
        }
    }
}

/// Quantizes a row (length a multiple of 256) into `out` (one block per 256 values).
pub fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (c, o) in x.chunks_exact(256).zip(out.iter_mut()) {
        if let Ok(c) = <&[f32; 256]>::try_from(c) {
            *o = quantize_q8k(c);
        }
    }
}
