//! An [`IntMatrix`] as GGML blocks, so GPTQ/AWQ/INT weights run on the Q4_0/Q4_1/Q8_0 kernels
//! of [`crate::QMatrix`] instead of being dequantized to floats.
//!
//! ```text
//!   IntMatrix row r, 32 columns of one group g (group length a multiple of 32, no g_idx):
//!     w = scale * (q - zero)
//!   4 bits, every zero 8    -> Q4_0  d = scale,  qs = q               w = d * (qs - 8)     exact
//!   4 bits, otherwise       -> Q4_1  d = scale,  m = f16(-scale * zero),  qs = q
//!                                                                     w = d * qs + m       m rounded
//!   8 bits, every zero 128  -> Q8_0  d = scale,  qs = q - 128 (i8)    w = d * qs           exact
//! ```
//!
//! Q4_1 stores the offset `m = -scale * zero` as f16, which rounds it (to 11 significant bits):
//! each weight moves by at most half an f16 ulp of `scale * zero`, a few thousandths of a step.
//! The alternatives were to refuse asymmetric matrices (most GPTQ/AWQ checkpoints are
//! asymmetric) or to keep zeros beside the blocks (a new format and kernel).
//!
//! Anything else (2/3/5/6/7 bits, asymmetric 8 bits, act-order `g_idx`, groups that are not whole
//! blocks, a scale f16 cannot hold) gives `None`: the caller dequantizes instead.

use crate::{q4_0, q4_1, q8_0, GgmlType, IntMatrix};

const BLOCK: usize = 32;

/// The GGML type and row-major block bytes (`rows` rows of `cols / 32` blocks, the layout of
/// [`crate::QMatrix::new`]) holding `m`, when one of Q4_0/Q4_1/Q8_0 fits (module doc).
pub fn to_ggml_blocks(m: &IntMatrix) -> Option<(GgmlType, Vec<u8>)> {
    m.validate().ok()?;
    let group_len = m.spec.group_len(m.cols);
    let blocks_per_row = m.cols / BLOCK;
    if !group_len.is_multiple_of(BLOCK) || (0..m.cols).any(|c| m.group_of(c) != c / group_len) {
        return None;
    }
    let d16 = |s: f32| {
        let h = half::f16::from_f32(s);
        (h.to_f32() == s).then_some(h)
    };
    let all_zeros = |z: u8| m.zeros.iter().all(|&x| x == z);
    let ty = match m.spec.bits {
        4 if all_zeros(8) => GgmlType::Q4_0,
        4 => GgmlType::Q4_1,
        8 if all_zeros(128) => GgmlType::Q8_0,
        _ => return None,
    };
    let block_bytes = match ty {
        GgmlType::Q4_0 => q4_0::BYTES,
        GgmlType::Q4_1 => q4_1::BYTES,
        _ => q8_0::BYTES,
    };
    let mut out = Vec::with_capacity(m.rows * blocks_per_row * block_bytes);
    for r in 0..m.rows {
        for b in 0..blocks_per_row {
            let p = m.params(r, b * BLOCK / group_len);
            let d = d16(p.scale)?;
            let qs = &m.q[r * m.cols + b * BLOCK..r * m.cols + (b + 1) * BLOCK];
            out.extend_from_slice(&d.to_le_bytes());
            match ty {
                GgmlType::Q8_0 => out.extend(qs.iter().map(|&q| q ^ 0x80)),
                _ => {
                    if ty == GgmlType::Q4_1 {
                        let min = half::f16::from_f32(-p.scale * p.zero as f32);
                        out.extend_from_slice(&min.to_le_bytes());
                    }
                    out.extend((0..16).map(|j| qs[j] | (qs[j + 16] << 4)));
                }
            }
        }
    }
    Some((ty, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntSpec;

    fn matrix(bits: u8, group_size: Option<usize>, sym: bool) -> IntMatrix {
        let (rows, cols) = (5, 128);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 211) as f32 - 90.0) / 37.0)
            .collect();
        let spec = IntSpec {
            bits,
            group_size,
            sym,
        };
        IntMatrix::rtn(&w, rows, cols, spec).unwrap()
    }

    fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        crate::dequantize(ty, bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn exact_types_match_the_matrix() {
        for (bits, ty) in [(4, GgmlType::Q4_0), (8, GgmlType::Q8_0)] {
            for group_size in [Some(32), Some(64), None] {
                let m = matrix(bits, group_size, true);
                let (got, bytes) = to_ggml_blocks(&m).unwrap();
                assert_eq!(got, ty);
                assert_eq!(dequant(ty, &bytes, m.q.len()), m.dequantize());
            }
        }
    }

    #[test]
    fn q4_1_matches_within_the_f16_offset() {
        for group_size in [Some(32), Some(128), None] {
            let m = matrix(4, group_size, false);
            let (ty, bytes) = to_ggml_blocks(&m).unwrap();
            assert_eq!(ty, GgmlType::Q4_1);
            let want = m.dequantize();
            for (i, (a, b)) in dequant(ty, &bytes, want.len())
                .iter()
                .zip(&want)
                .enumerate()
            {
                let p = m.params(i / m.cols, m.group_of(i % m.cols));
                let bound = (p.scale * p.zero as f32).abs() * 2f32.powi(-11) + 1e-6;
                assert!((a - b).abs() <= bound, "{i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn other_matrices_have_no_blocks() {
        assert!(to_ggml_blocks(&matrix(3, Some(32), false)).is_none());
        assert!(to_ggml_blocks(&matrix(8, Some(32), false)).is_none());
        assert!(to_ggml_blocks(&matrix(4, Some(16), true)).is_none());
        let mut m = matrix(4, Some(32), true);
        m.g_idx = Some((0..m.cols as u32).map(|c| (c + 1) % 128 / 32).collect());
        assert!(to_ggml_blocks(&m).is_none());
        // A g_idx equal to the default grouping is no obstacle.
        m.g_idx = Some((0..m.cols as u32).map(|c| c / 32).collect());
        assert!(to_ggml_blocks(&m).is_some());
    }
}
