//! GGML/GGUF quantized block formats and fast CPU quantized matmul kernels.
//!
//! Everything works on plain byte slices in GGUF layout, so a memory-mapped file can be used
//! without copying ([`SharedBytes`]). The pieces:
//!
//! - [`GgmlType`]: the GGML type ids, block sizes and byte sizes (all known types, so a loader can
//!   size every tensor; only some have kernels here, the others give [`Error::Unsupported`]).
//! - One module per format ([`q8_0`], [`q4_0`], [`q4_1`], [`q5_0`], [`q5_1`], [`q4_k`], [`q6_k`],
//!   [`plain`]): the block
//!   layout with a diagram, a reference `dequantize_block`, a reference quantizer and the dot
//!   products (a portable scalar reference and AVX2 / AVX-512 VNNI versions beside it).
//! - [`QMatrix`]: a `(rows, cols)` weight matrix with `matmul(x) = x · Wᵀ`, parallel over output
//!   rows with rayon and tiled over tokens for prefill.
//!
//! Like llama.cpp, the activations are quantized once per matmul call to 8 bits (blocks of 32 for
//! the "legacy" formats, blocks of 256 with per-16 sums for the K-quants, see [`act`]) and the
//! inner loops are integer dot products.
//!
//! Kernel choice: [`Isa::detect`] picks the best instruction set at run time; the environment
//! variable `KILN_QUANT_ISA=scalar|avx2|avx512vnni` caps it (for benchmarks and bisecting).

pub mod act;
pub mod awq;
pub mod awq_pack;
mod bytes;
mod error;
pub mod gptq;
pub mod gptq_pack;
pub mod int;
pub mod int_blocks;
mod isa;
mod legacy;
mod linalg;
pub mod llm_int8;
mod matmul;
mod packed8;
mod parallel;
pub mod plain;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q6_k;
pub mod q8_0;
mod types;

#[cfg(target_arch = "x86_64")]
mod x86;

pub use awq::{AwqConfig, ScaleSearch};
pub use bytes::SharedBytes;
pub use error::{Error, Result};
pub use gptq::{gptq, GptqConfig, GptqOutput, Hessian};
pub use int::{GroupParams, IntMatrix, IntSpec};
pub use int_blocks::to_ggml_blocks;
pub use isa::Isa;
pub use llm_int8::Int8Rows;
pub use matmul::QMatrix;
pub use types::GgmlType;

/// Quantizes `src` (a whole number of blocks of `ty`) into GGUF bytes.
///
/// Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are bit-identical to ggml's reference quantizers; Q4_K and Q6_K use a
/// simpler (lower quality) search than ggml and are meant for tests.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let n_bytes = ty.row_bytes(src.len())?;
    let mut dst = vec![0u8; n_bytes];
    match ty {
        GgmlType::F32 => plain::quantize_f32(src, &mut dst),
        GgmlType::F16 => plain::quantize_f16(src, &mut dst),
        GgmlType::BF16 => plain::quantize_bf16(src, &mut dst),
        GgmlType::Q8_0 => blocks(src, &mut dst, q8_0::quantize_block),
        GgmlType::Q4_0 => blocks(src, &mut dst, q4_0::quantize_block),
        GgmlType::Q4_1 => blocks(src, &mut dst, q4_1::quantize_block),
        GgmlType::Q5_0 => blocks(src, &mut dst, q5_0::quantize_block),
        GgmlType::Q5_1 => blocks(src, &mut dst, q5_1::quantize_block),
        GgmlType::Q4_K => blocks(src, &mut dst, q4_k::quantize_block),
        GgmlType::Q6_K => blocks(src, &mut dst, q6_k::quantize_block),
        _ => return Err(Error::Unsupported { ty, op: "quantize" }),
    }
    Ok(dst)
}

/// Dequantizes GGUF bytes of `ty` into `out` (whose length is the number of values).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let n_bytes = ty.row_bytes(out.len())?;
    if src.len() != n_bytes {
        return Err(Error::SizeMismatch {
            what: "dequantize input bytes",
            expected: n_bytes,
            got: src.len(),
        });
    }
    match ty {
        GgmlType::F32 => plain::dequantize_f32(src, out),
        GgmlType::F16 => plain::dequantize_f16(src, out),
        GgmlType::BF16 => plain::dequantize_bf16(src, out),
        GgmlType::Q8_0 => deblocks(src, out, q8_0::dequantize_block),
        GgmlType::Q4_0 => deblocks(src, out, q4_0::dequantize_block),
        GgmlType::Q4_1 => deblocks(src, out, q4_1::dequantize_block),
        GgmlType::Q5_0 => deblocks(src, out, q5_0::dequantize_block),
        GgmlType::Q5_1 => deblocks(src, out, q5_1::dequantize_block),
        GgmlType::Q4_K => deblocks(src, out, q4_k::dequantize_block),
        GgmlType::Q6_K => deblocks(src, out, q6_k::dequantize_block),
        _ => {
            return Err(Error::Unsupported {
                ty,
                op: "dequantize",
            })
        }
    }
    Ok(())
}

/// Applies a fixed-size block quantizer over matching chunks (sizes were checked by the caller).
fn blocks<const N: usize, const B: usize>(
    src: &[f32],
    dst: &mut [u8],
    f: fn(&[f32; N]) -> [u8; B],
) {
    for (s, d) in src.chunks_exact(N).zip(dst.chunks_exact_mut(B)) {
        if let (Ok(s), Ok(d)) = (<&[f32; N]>::try_from(s), <&mut [u8; B]>::try_from(d)) {
            *d = f(s);
        }
    }
}

fn deblocks<const N: usize, const B: usize>(
    src: &[u8],
    out: &mut [f32],
    f: fn(&[u8; B], &mut [f32; N]),
) {
    for (s, d) in src.chunks_exact(B).zip(out.chunks_exact_mut(N)) {
        if let (Ok(s), Ok(d)) = (<&[u8; B]>::try_from(s), <&mut [f32; N]>::try_from(d)) {
            f(s, d);
        }
    }
}

/// Reads the little-endian f16 at `b[i..i + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}
