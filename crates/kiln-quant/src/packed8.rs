//! Q4_0, Q4_1 and Q8_0 repacked at load for the x86 kernels: rows in groups of 8, interleaved
//! 4 bytes at a time, so one 32-byte register holds the same 4 quants of all 8 rows.
//!
//! ```text
//! GGUF, row-major (a row after a row, blocks of 32 values):
//!   Q8_0 block (34 B): | d f16 | qs[32] i8 |            value v = qs[v]
//!   Q4_0 block (18 B): | d f16 | qs[16] |                 v < 16: qs[v] & 0xF, else qs[v-16] >> 4
//!   Q4_1 block (20 B): | d f16 | m f16 | qs[16] |         (as Q4_0)
//!
//! Packed8, group g = rows 8g .. 8g+8, block column b, k = g nb + b:
//!   quant plane, one 32-byte vector per j:  | row 0: c_j | row 1: c_j | ... | row 7: c_j |
//!       c_j = the row's quant bytes 4j .. 4j+4  (Q8_0: qs ^ 0x80, j < 8; Q4: qs, j < 4)
//!   d plane: | d(row 0) .. d(row 7) |  f16, at 8k;   m plane (Q4_1 only): the same for m
//! ```
//!
//! Why: with the rows in the 32-bit lanes, the dot products of all 8 rows with one token's block
//! accumulate in one vector (`vpdpbusd` of a weight vector with the token's 4 bytes broadcast),
//! with no horizontal reduction, and the scale multiply, the convert and the float accumulation
//! are one instruction per 8 rows. The GGUF layout needs them per row (and its 18/20/34-byte
//! blocks split loads across cache lines). llama.cpp's REPACK buffers (`block_q4_0x8`) are the
//! same idea; this layout and its kernels are kiln's own.
//!
//! Q4 bytes need no reordering: byte `4j + c` holds value `4j + c` (low nibble) and `16 + 4j + c`
//! (high nibble), so a loaded vector masked gives the quants of values `4j..4j+4` and shifted
//! those of `16+4j..`, which are activation bytes `4j..` and `4(j+4)..`. Q8_0 is stored biased
//! (`qs + 128`) so it is the unsigned `vpdpbusd` operand as it is; the kernels subtract
//! `128 Σ y` (Q4_0: `8 Σ y`) in integers, exactly. Rows past the matrix (the last group's
//! padding) have zero scales and are never written out.

use crate::{q4_0, q4_1, q8_0, GgmlType};

pub(crate) const GROUP: usize = 8;

/// The formats with a packed layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Kind {
    pub fn of(ty: GgmlType) -> Option<Kind> {
        match ty {
            GgmlType::Q4_0 => Some(Kind::Q4_0),
            GgmlType::Q4_1 => Some(Kind::Q4_1),
            GgmlType::Q8_0 => Some(Kind::Q8_0),
            _ => None,
        }
    }

    /// 32-byte quant vectors per group and block column.
    pub const fn vectors(self) -> usize {
        match self {
            Kind::Q8_0 => 8,
            Kind::Q4_0 | Kind::Q4_1 => 4,
        }
    }

    /// What the stored unsigned quants exceed the signed values by (`Σ q·y` minus `bias Σ y`
    /// is the signed dot product); Q4_1 has none (its minimum is a separate term).
    pub const fn bias(self) -> i32 {
        match self {
            Kind::Q8_0 => 128,
            Kind::Q4_0 => 8,
            Kind::Q4_1 => 0,
        }
    }

    /// GGUF block bytes, and the offset of the quants in the block.
    const fn block(self) -> (usize, usize) {
        match self {
            Kind::Q8_0 => (q8_0::BYTES, 2),
            Kind::Q4_0 => (q4_0::BYTES, 2),
            Kind::Q4_1 => (q4_1::BYTES, 4),
        }
    }
}

/// 32 bytes, 32-byte aligned: one quant vector.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Quants32(pub [u8; 32]);

/// A matrix in the layout of the module doc.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Packed8 {
    pub kind: Kind,
    pub nb: usize,
    pub groups: usize,
    pub qs: Vec<Quants32>,
    pub d: Vec<u16>,
    /// Q4_1's minimums, else empty.
    pub m: Vec<u16>,
}

impl std::fmt::Debug for Packed8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Packed8 {{ {:?}, groups: {}, nb: {} }}",
            self.kind, self.groups, self.nb
        )
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Packed8 {
    /// Repacks `rows` GGUF rows of `nb` blocks each (`data` is checked by `QMatrix::new`).
    pub fn pack(kind: Kind, data: &[u8], rows: usize, nb: usize) -> Packed8 {
        let groups = rows.div_ceil(GROUP);
        let nv = kind.vectors();
        let pad = if kind == Kind::Q8_0 { 128 } else { 0 };
        let mut qs = vec![Quants32([pad; 32]); groups * nb * nv];
        let mut d = vec![0u16; groups * nb * GROUP];
        let mut m = vec![0u16; if kind == Kind::Q4_1 { d.len() } else { 0 }];
        let (block, q0) = kind.block();
        for (r, row) in data.chunks_exact(nb * block).enumerate().take(rows) {
            let (g, i) = (r / GROUP, r % GROUP);
            for (b, blk) in row.chunks_exact(block).enumerate() {
                let k = g * nb + b;
                d[k * GROUP + i] = u16::from_le_bytes([blk[0], blk[1]]);
                if kind == Kind::Q4_1 {
                    m[k * GROUP + i] = u16::from_le_bytes([blk[2], blk[3]]);
                }
                for (j, c) in blk[q0..].chunks_exact(4).enumerate() {
                    for (o, &q) in qs[k * nv + j].0[4 * i..4 * i + 4].iter_mut().zip(c) {
                        *o = if kind == Kind::Q8_0 { q ^ 0x80 } else { q };
                    }
                }
            }
        }
        Packed8 {
            kind,
            nb,
            groups,
            qs,
            d,
            m,
        }
    }

    /// Bytes of one group (quants and scales), for cache blocking.
    pub fn group_bytes(&self) -> usize {
        let scales = if self.kind == Kind::Q4_1 { 4 } else { 2 };
        self.nb * (self.kind.vectors() * 32 + GROUP * scales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpacks value `v` of row `r`, block `b` from the packed planes.
    fn value(p: &Packed8, r: usize, b: usize, v: usize) -> u8 {
        let (k, i) = (((r / GROUP) * p.nb + b), r % GROUP);
        let nv = p.kind.vectors();
        match p.kind {
            Kind::Q8_0 => p.qs[k * nv + v / 4].0[4 * i + v % 4] ^ 0x80,
            _ => {
                let byte = p.qs[k * nv + (v % 16) / 4].0[4 * i + v % 4];
                if v < 16 {
                    byte & 0xF
                } else {
                    byte >> 4
                }
            }
        }
    }

    #[test]
    fn pack_places_every_value_and_scale() {
        let (rows, nb) = (11, 3);
        let w: Vec<f32> = (0..rows * nb * 32)
            .map(|i| ((i * 37) % 97) as f32 - 48.0)
            .collect();
        for (ty, kind) in [
            (GgmlType::Q8_0, Kind::Q8_0),
            (GgmlType::Q4_0, Kind::Q4_0),
            (GgmlType::Q4_1, Kind::Q4_1),
        ] {
            let data = crate::quantize(ty, &w).expect("whole blocks");
            let p = Packed8::pack(kind, &data, rows, nb);
            assert_eq!(p.groups, 2);
            let (block, q0) = kind.block();
            for r in 0..rows {
                for b in 0..nb {
                    let blk = &data[(r * nb + b) * block..(r * nb + b + 1) * block];
                    let k = ((r / 8) * nb + b) * 8 + r % 8;
                    assert_eq!(p.d[k].to_le_bytes(), [blk[0], blk[1]]);
                    if kind == Kind::Q4_1 {
                        assert_eq!(p.m[k].to_le_bytes(), [blk[2], blk[3]]);
                    }
                    for v in 0..32 {
                        let want = match kind {
                            Kind::Q8_0 => blk[q0 + v],
                            _ if v < 16 => blk[q0 + v] & 0xF,
                            _ => blk[q0 + v - 16] >> 4,
                        };
                        assert_eq!(
                            value(&p, r, b, v),
                            want,
                            "{kind:?} row {r} block {b} value {v}"
                        );
                    }
                }
            }
            // Padding rows: zero scale, quants that are zero once unbiased.
            let k = (nb + 1) * 8 + 7;
            assert_eq!(p.d[k], 0);
            assert!((0..32).all(|v| value(&p, 15, 1, v) == 0));
        }
    }
}
