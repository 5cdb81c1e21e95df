//! AWQ checkpoints as AutoAWQ writes them (`quant_method: "awq"`, 4 bits, `zero_point: true`):
//! the GEMM layout (`version: "gemm"`, the common one) and the GEMV layout (`"gemv"`), read
//! into and written from an [`IntMatrix`].
//!
//! Reference: AutoAWQ `awq/modules/linear/gemm.py` and `gemv.py` (`WQLinear_*.from_linear`, the
//! buffer shapes, `calculate_zeros_width`), `awq/utils/packing_utils.py` (`AWQ_ORDER`,
//! `AWQ_REVERSE_ORDER`, `unpack_awq`).
//!
//! ```text
//!   IntMatrix q: (out, in).  GEMM stores it transposed and packs along the OUTPUT dimension,
//!   8 output channels per int32 word in an interleaved nibble order:
//!
//!   {name}.qweight  int32 (in, out/8)        word [c, j] holds q[8j + o', c]
//!   {name}.qzeros   int32 (n_groups, out/8)  word [g, j] holds zero[8j + o', g]   (as they are)
//!   {name}.scales   f16   (n_groups, out)    scale[o, g] at [g, o]
//!
//!     bit 31  28 27  24 23  20 19  16 15  12 11   8 7    4 3    0
//!        [ o'=7 | o'=5 | o'=3 | o'=1 | o'=6 | o'=4 | o'=2 | o'=0 ]     nibble i: o' = ORDER[i]
//!                                                                   ORDER = 0 2 4 6 1 3 5 7
//!   w[o, c] = scales[g, o] * (q[o, c] - zero[o, g]),  g = c / group_size  (no g_idx in AWQ)
//!
//!   GEMV: not transposed, packed along the INPUT dimension in plain nibble order:
//!   {name}.qweight  int32 (out, in/8)        word [o, j] nibble i = q[o, 8j + i]
//!   {name}.qzeros   int32 (out, zw)          word [o, j] nibble i = zero[o, 8j + i], 0 past n_groups
//!   {name}.scales   f16   (out, zw*8)        scale[o, g] at [o, g], 0 past n_groups
//!   zw = n_groups/8 rounded up, then up to a multiple of 1 (group >= 128), 2 (64) or 4 (32);
//!   other group sizes have no GEMV layout.
//! ```
//!
//! The GEMM order lets the CUDA kernel turn each word into four f16x2 pairs `(o'=2p, 2p+1)`
//! with one shift and mask per pair. AutoAWQ's `zero_point: false` variant cannot be saved in
//! either layout (its `from_linear` needs zero points), so it is not handled. Every
//! unpacked matrix is asymmetric (`sym: false`): the file does not say.

use half::f16;
use rayon::prelude::*;

use crate::gptq_pack::{check_len, f16_scales};
use crate::{Error, IntMatrix, IntSpec, Result};

/// Nibble `i` of a GEMM word holds output channel `8j + ORDER[i]`.
pub const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Output channel `8j + o'` sits in nibble `REVERSE[o']` (the inverse of [`ORDER`]).
pub const REVERSE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// `quantization_config.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwqVersion {
    Gemm,
    Gemv,
}

impl AwqVersion {
    pub fn from_version(version: &str) -> Result<AwqVersion> {
        match version.to_ascii_lowercase().as_str() {
            "gemm" => Ok(AwqVersion::Gemm),
            "gemv" => Ok(AwqVersion::Gemv),
            other => Err(Error::Invalid(format!(
                "AWQ version {other:?} is not supported (only \"gemm\" and \"gemv\")"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AwqVersion::Gemm => "gemm",
            AwqVersion::Gemv => "gemv",
        }
    }
}

/// The tensors of one quantized linear, row-major in the shapes of [`AwqShapes`] (the same
/// struct for both layouts; which one is the caller's to know).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqTensors {
    pub qweight: Vec<i32>,
    pub qzeros: Vec<i32>,
    pub scales: Vec<f16>,
    pub in_features: usize,
    pub out_features: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwqShapes {
    pub qweight: [usize; 2],
    pub qzeros: [usize; 2],
    pub scales: [usize; 2],
}

/// The shapes of a layer in layout `v`, after checking that the layout can hold it.
pub fn shapes(
    v: AwqVersion,
    in_features: usize,
    out_features: usize,
    group_size: Option<usize>,
) -> Result<AwqShapes> {
    if in_features == 0 || out_features == 0 {
        return Err(Error::Invalid(format!(
            "an AWQ layer needs input and output features, got {in_features} x {out_features}"
        )));
    }
    IntSpec {
        bits: 4,
        group_size,
        sym: false,
    }
    .check(in_features)?;
    let g = group_size.unwrap_or(in_features);
    let n_groups = in_features / g;
    let (what, n) = match v {
        AwqVersion::Gemm => ("output", out_features),
        AwqVersion::Gemv => ("input", in_features),
    };
    if !n.is_multiple_of(8) {
        return Err(Error::Invalid(format!(
            "AWQ {} packs 8 {what} features per word, {n} is not a multiple of 8",
            v.name()
        )));
    }
    Ok(match v {
        AwqVersion::Gemm => AwqShapes {
            qweight: [in_features, out_features / 8],
            qzeros: [n_groups, out_features / 8],
            scales: [n_groups, out_features],
        },
        AwqVersion::Gemv => {
            let zw = zeros_width(n_groups, g)?;
            AwqShapes {
                qweight: [out_features, in_features / 8],
                qzeros: [out_features, zw],
                scales: [out_features, zw * 8],
            }
        }
    })
}

/// GEMV's qzeros width: the words for `n_groups` nibbles, rounded up for the kernel's tiles.
fn zeros_width(n_groups: usize, group_len: usize) -> Result<usize> {
    let multiple = match group_len {
        g if g >= 128 => 1,
        64 => 2,
        32 => 4,
        g => {
            return Err(Error::Invalid(format!(
                "AWQ gemv takes groups of 32, 64 or at least 128, not {g}"
            )))
        }
    };
    Ok(n_groups.div_ceil(8).div_ceil(multiple) * multiple)
}

/// Writes `m` (4 bits, no act-order `g_idx`, f16 scales) in the GEMM layout.
pub fn pack(m: &IntMatrix) -> Result<AwqTensors> {
    pack_as(m, AwqVersion::Gemm)
}

/// Reads the GEMM tensors of a layer (`group_size` from `quantization_config`, -1 there is
/// `None`), checking every size.
pub fn unpack(t: &AwqTensors, group_size: Option<usize>) -> Result<IntMatrix> {
    unpack_as(t, AwqVersion::Gemm, group_size)
}

/// [`pack`] in the GEMV layout.
pub fn pack_gemv(m: &IntMatrix) -> Result<AwqTensors> {
    pack_as(m, AwqVersion::Gemv)
}

/// [`unpack`] for the GEMV layout (its padding is not read).
pub fn unpack_gemv(t: &AwqTensors, group_size: Option<usize>) -> Result<IntMatrix> {
    unpack_as(t, AwqVersion::Gemv, group_size)
}

/// [`pack`] or [`pack_gemv`].
pub fn pack_as(m: &IntMatrix, v: AwqVersion) -> Result<AwqTensors> {
    m.validate()?;
    if m.spec.bits != 4 {
        return Err(Error::Invalid(format!(
            "AWQ checkpoints are 4-bit, not {}-bit",
            m.spec.bits
        )));
    }
    let (out, cols) = (m.rows, m.cols);
    let s = shapes(v, cols, out, m.spec.group_size)?;
    if (0..cols).any(|c| m.group_of(c) != c / m.spec.group_len(cols)) {
        return Err(Error::Invalid(
            "AWQ has no g_idx: a matrix with act-order groups cannot be written as AWQ".into(),
        ));
    }
    let n_groups = m.n_groups();
    let scales = f16_scales(&m.scales)?;
    let q = |o: usize, c: usize| m.q[o * cols + c] as u32;
    let z = |o: usize, g: usize| m.zeros[o * n_groups + g] as u32;
    let sc = |o: usize, g: usize| scales[o * n_groups + g];
    let mut t = AwqTensors {
        qweight: vec![0; s.qweight[0] * s.qweight[1]],
        qzeros: vec![0; s.qzeros[0] * s.qzeros[1]],
        scales: vec![f16::ZERO; s.scales[0] * s.scales[1]],
        in_features: cols,
        out_features: out,
    };
    match v {
        AwqVersion::Gemm => {
            let wpr = out / 8;
            t.qweight
                .par_chunks_mut(wpr)
                .enumerate()
                .for_each(|(c, words)| {
                    for (j, w) in words.iter_mut().enumerate() {
                        *w = interleave(|o| q(8 * j + o, c));
                    }
                });
            for g in 0..n_groups {
                for j in 0..wpr {
                    t.qzeros[g * wpr + j] = interleave(|o| z(8 * j + o, g));
                }
                for o in 0..out {
                    t.scales[g * out + o] = sc(o, g);
                }
            }
        }
        AwqVersion::Gemv => {
            let (wpr, zw) = (cols / 8, s.qzeros[1]);
            t.qweight
                .par_chunks_mut(wpr)
                .enumerate()
                .for_each(|(o, words)| {
                    for (j, w) in words.iter_mut().enumerate() {
                        *w = plain(|i| q(o, 8 * j + i));
                    }
                });
            for o in 0..out {
                for j in 0..zw {
                    let zero = |i: usize| {
                        if 8 * j + i < n_groups {
                            z(o, 8 * j + i)
                        } else {
                            0
                        }
                    };
                    t.qzeros[o * zw + j] = plain(zero);
                }
                for g in 0..n_groups {
                    t.scales[o * zw * 8 + g] = sc(o, g);
                }
            }
        }
    }
    Ok(t)
}

/// [`unpack`] or [`unpack_gemv`].
pub fn unpack_as(t: &AwqTensors, v: AwqVersion, group_size: Option<usize>) -> Result<IntMatrix> {
    let (out, cols) = (t.out_features, t.in_features);
    let s = shapes(v, cols, out, group_size)?;
    check_len("AWQ qweight", t.qweight.len(), s.qweight)?;
    check_len("AWQ qzeros", t.qzeros.len(), s.qzeros)?;
    check_len("AWQ scales", t.scales.len(), s.scales)?;
    let n_groups = cols / group_size.unwrap_or(cols);
    let mut q = vec![0u8; out * cols];
    let mut zeros = vec![0u8; out * n_groups];
    let mut scales = vec![0f32; out * n_groups];
    match v {
        AwqVersion::Gemm => {
            let wpr = out / 8;
            q.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
                let (j, nibble) = (o / 8, REVERSE[o % 8]);
                for (c, x) in row.iter_mut().enumerate() {
                    *x = nib(t.qweight[c * wpr + j], nibble);
                }
            });
            for o in 0..out {
                for g in 0..n_groups {
                    zeros[o * n_groups + g] = nib(t.qzeros[g * wpr + o / 8], REVERSE[o % 8]);
                    scales[o * n_groups + g] = t.scales[g * out + o].to_f32();
                }
            }
        }
        AwqVersion::Gemv => {
            let (wpr, zw) = (cols / 8, s.qzeros[1]);
            q.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = nib(t.qweight[o * wpr + c / 8], c % 8);
                }
            });
            for o in 0..out {
                for g in 0..n_groups {
                    zeros[o * n_groups + g] = nib(t.qzeros[o * zw + g / 8], g % 8);
                    scales[o * n_groups + g] = t.scales[o * zw * 8 + g].to_f32();
                }
            }
        }
    }
    let m = IntMatrix {
        rows: out,
        cols,
        spec: IntSpec {
            bits: 4,
            group_size,
            sym: false,
        },
        q,
        scales,
        zeros,
        g_idx: None,
    };
    m.validate()?;
    Ok(m)
}

/// A GEMM word: nibble `i` from channel `ORDER[i]` of the 8 given by `val`.
#[inline]
fn interleave(val: impl Fn(usize) -> u32) -> i32 {
    (0..8).fold(0u32, |w, i| w | val(ORDER[i]) << (4 * i)) as i32
}

/// A GEMV word: nibble `i` from value `i`.
#[inline]
fn plain(val: impl Fn(usize) -> u32) -> i32 {
    (0..8).fold(0u32, |w, i| w | val(i) << (4 * i)) as i32
}

#[inline]
fn nib(word: i32, i: usize) -> u8 {
    ((word as u32 >> (4 * i)) & 0xF) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_inverts_order() {
        for (i, &o) in ORDER.iter().enumerate() {
            assert_eq!(REVERSE[o], i);
        }
    }

    #[test]
    fn gemm_word_of_channels_0_to_7() {
        // Channel o holds the value o: nibbles read 0 2 4 6 1 3 5 7 from the low end.
        assert_eq!(interleave(|o| o as u32) as u32, 0x7531_6420);
    }

    #[test]
    fn gemv_zero_width() {
        assert_eq!(zeros_width(32, 128).unwrap(), 4);
        assert_eq!(zeros_width(3, 128).unwrap(), 1);
        assert_eq!(zeros_width(4, 32).unwrap(), 4);
        assert_eq!(zeros_width(2, 64).unwrap(), 2);
        assert!(zeros_width(4, 16).is_err());
    }
}
