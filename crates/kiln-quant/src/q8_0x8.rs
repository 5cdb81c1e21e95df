//! Q8_0 repacked for the x86 kernels: rows in groups of 8, each block column of a group stored as
//! one contiguous, aligned 256-byte run, with the group's 8 scales beside it.
//!
//! ```text
//! GGUF Q8_0, row-major (34-byte blocks, a row after a row):
//!   row r: | d f16 | qs[32] | d f16 | qs[32] | ...            (block b at r * row_bytes + 34 b)
//!
//! Q8_0x8, group g = rows 8g .. 8g+8, block column b:
//!   qs plane: | row 8g: qs+128 [32] | row 8g+1 [32] | ... | row 8g+7 [32] |   at ((g nb + b) 8 + i) 32
//!   d plane:  | d(8g) | d(8g+1) | ... | d(8g+7) |   f16, at (g nb + b) 8 + i
//! ```
//!
//! Why: a decode step streams every weight once, and with 34-byte blocks half of the 32-byte
//! loads split across cache lines and every block needs its own scalar scale conversion. Here a
//! group's weights are one sequential stream of aligned loads, 8 scales convert with one
//! `vcvtph2ps`, and the 8 rows' integer dot products are reduced into one vector, so the scale
//! multiply and the float accumulation are one instruction per 8 rows instead of per row.
//! Measured on a 49152×576 matrix: about 2× the GGUF-layout kernel on one thread (see the crate
//! README). llama.cpp's REPACK buffers (`block_q8_0x4`) follow the same idea.
//!
//! The values are stored biased (`qs + 128`, i.e. `qs ^ 0x80`) so they are the unsigned operand of
//! `vpdpbusd` as they are; the kernels subtract `128 Σ y` once per 8 rows. Rows past the matrix
//! (the last group's padding) have zero scales and are never written out.

use crate::q8_0;

pub(crate) const GROUP: usize = 8;

/// 32 bytes, 32-byte aligned: one block's biased quants.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Quants32(pub [u8; 32]);

/// A Q8_0 matrix in the grouped layout of the module doc.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct PackedQ8x8 {
    pub nb: usize,
    pub groups: usize,
    pub qs: Vec<Quants32>,
    pub d: Vec<u16>,
}

impl std::fmt::Debug for PackedQ8x8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedQ8x8 {{ groups: {}, nb: {} }}",
            self.groups, self.nb
        )
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl PackedQ8x8 {
    /// Repacks `rows` GGUF Q8_0 rows of `nb` blocks each (`data` is checked by `QMatrix::new`).
    pub fn pack(data: &[u8], rows: usize, nb: usize) -> PackedQ8x8 {
        let groups = rows.div_ceil(GROUP);
        let mut qs = vec![Quants32([128; 32]); groups * nb * GROUP];
        let mut d = vec![0u16; groups * nb * GROUP];
        let row_bytes = nb * q8_0::BYTES;
        for (r, row) in data.chunks_exact(row_bytes).enumerate().take(rows) {
            let (g, i) = (r / GROUP, r % GROUP);
            for (b, blk) in row.chunks_exact(q8_0::BYTES).enumerate() {
                let k = (g * nb + b) * GROUP + i;
                d[k] = u16::from_le_bytes([blk[0], blk[1]]);
                for (o, &q) in qs[k].0.iter_mut().zip(&blk[2..]) {
                    *o = q ^ 0x80;
                }
            }
        }
        PackedQ8x8 { nb, groups, qs, d }
    }

    /// Bytes of one group (quants and scales), for cache blocking.
    pub fn group_bytes(&self) -> usize {
        self.nb * GROUP * (32 + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_places_every_block() {
        let (rows, nb) = (11, 3);
        let w: Vec<f32> = (0..rows * nb * 32)
            .map(|i| (i % 97) as f32 - 48.0)
            .collect();
        let data = crate::quantize(crate::GgmlType::Q8_0, &w).expect("whole blocks");
        let p = PackedQ8x8::pack(&data, rows, nb);
        assert_eq!(p.groups, 2);
        for r in 0..rows {
            for b in 0..nb {
                let blk = &data[(r * nb + b) * 34..(r * nb + b + 1) * 34];
                let k = ((r / 8) * nb + b) * 8 + r % 8;
                assert_eq!(p.d[k].to_le_bytes(), [blk[0], blk[1]]);
                let back: Vec<u8> = p.qs[k].0.iter().map(|q| q ^ 0x80).collect();
                assert_eq!(back, &blk[2..]);
            }
        }
        // Padding rows: zero scale, quants that are zero once unbiased.
        let k = (nb + 1) * 8 + 7;
        assert_eq!(p.d[k], 0);
        assert!(p.qs[k].0.iter().all(|&q| q == 128));
    }
}
