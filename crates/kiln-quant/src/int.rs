//! Integer weight matrices quantized in groups along the input dimension: the common form of
//! kiln's INT8/INT4 (and GPTQ's 2/3-bit) weights, whatever file layout they come from or go to
//! (`gptq_pack`, `awq_pack`) and whatever algorithm chose them (RTN here, `gptq`, `awq`).
//!
//! ```text
//!   W (rows = out_features, cols = in_features), groups of `group_size` input columns
//!
//!            col 0 .. g-1      g .. 2g-1           ...
//!   row r  [ q q q ... q  |  q q q ... q  | ... ]     q: u8 in 0 ..= 2^bits - 1
//!          scale[r, 0]       scale[r, 1]              (f16-representable f32)
//!          zero[r, 0]        zero[r, 1]               (u8; symmetric: 2^(bits-1))
//!
//!   w[r, c] = scale[r, g] * (q[r, c] - zero[r, g]),   g = g_idx[c]  (default c / group_size)
//! ```
//!
//! The grid of a group follows the GPTQ paper's quantizer (its reference `Quantizer`, also
//! AutoGPTQ's): the range always contains 0 (`lo = min(min w, 0)`, `hi = max(max w, 0)`);
//! symmetric takes `hi = max(|lo|, hi)`, `lo = -hi`; an all-zero group uses `[-1, 1]`;
//! `scale = (hi - lo) / (2^bits - 1)`, `zero = round(-lo / scale)` (symmetric: `2^(bits-1)`);
//! `q = clamp(round(w / scale) + zero, 0, 2^bits - 1)`. Rounding is half to even, as torch's
//! and numpy's `round`. Deviation from the reference: the scale is rounded to f16 *before*
//! the weights are rounded to it, so the stored scale is the one the integers were chosen for
//! (the reference rounds it afterwards, when packing).

use crate::{Error, Result};

/// How a matrix is quantized: bits per weight, group length along the input dimension (`None`
/// = one group per output channel) and whether the grid is symmetric around zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntSpec {
    pub bits: u8,
    pub group_size: Option<usize>,
    pub sym: bool,
}

impl IntSpec {
    /// The largest integer (`2^bits - 1`).
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// The group length for a matrix of `cols` input columns.
    pub fn group_len(&self, cols: usize) -> usize {
        self.group_size.unwrap_or(cols)
    }

    pub fn check(&self, cols: usize) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            return Err(Error::Invalid(format!(
                "integer quantization takes 2 to 8 bits, not {}",
                self.bits
            )));
        }
        let g = self.group_len(cols);
        if g == 0 || !cols.is_multiple_of(g) {
            return Err(Error::Invalid(format!(
                "group size {g} does not divide the {cols} input columns"
            )));
        }
        Ok(())
    }
}

/// The scale and zero point of one group (see the module doc for the rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero: u8,
}

impl GroupParams {
    /// The grid for values whose minimum is `min` and maximum `max`.
    pub fn from_range(min: f32, max: f32, spec: &IntSpec) -> GroupParams {
        let maxq = spec.maxq() as f32;
        let (mut lo, mut hi) = (min.min(0.0), max.max(0.0));
        if spec.sym {
            hi = hi.max(-lo);
            if lo < 0.0 {
                lo = -hi;
            }
        }
        if lo == 0.0 && hi == 0.0 {
            lo = -1.0;
            hi = 1.0;
        }
        let scale = f16_round(((hi - lo) / maxq).max(f32::MIN_POSITIVE));
        let zero = if spec.sym {
            (spec.maxq() as f32 + 1.0) / 2.0
        } else {
            (-lo / scale).round_ties_even().clamp(0.0, maxq)
        };
        GroupParams {
            scale,
            zero: zero as u8,
        }
    }

    /// The grid of a slice of weights.
    pub fn of(w: &[f32], spec: &IntSpec) -> GroupParams {
        let (min, max) = w
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        GroupParams::from_range(min, max, spec)
    }

    /// The integer for `w` on this grid.
    #[inline]
    pub fn quantize(&self, w: f32, maxq: u32) -> u8 {
        ((w / self.scale).round_ties_even() + self.zero as f32).clamp(0.0, maxq as f32) as u8
    }

    #[inline]
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (q as f32 - self.zero as f32)
    }

    /// `w` rounded to this grid (quantize then dequantize).
    #[inline]
    pub fn fake(&self, w: f32, maxq: u32) -> f32 {
        self.dequantize(self.quantize(w, maxq))
    }
}

/// `x` rounded to the nearest f16 (as an f32).
pub fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// A matrix quantized to integers in groups (module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct IntMatrix {
    pub rows: usize,
    pub cols: usize,
    pub spec: IntSpec,
    /// `(rows, cols)` row-major, each in `0 ..= maxq`.
    pub q: Vec<u8>,
    /// `(rows, n_groups)` row-major.
    pub scales: Vec<f32>,
    /// `(rows, n_groups)` row-major.
    pub zeros: Vec<u8>,
    /// The group of each input column when it is not `c / group_size` (GPTQ's act-order
    /// without static groups); `None` otherwise.
    pub g_idx: Option<Vec<u32>>,
}

impl IntMatrix {
    pub fn n_groups(&self) -> usize {
        self.cols / self.spec.group_len(self.cols)
    }

    /// The group of input column `c`.
    #[inline]
    pub fn group_of(&self, c: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[c] as usize,
            None => c / self.spec.group_len(self.cols),
        }
    }

    pub fn params(&self, r: usize, g: usize) -> GroupParams {
        let i = r * self.n_groups() + g;
        GroupParams {
            scale: self.scales[i],
            zero: self.zeros[i],
        }
    }

    /// All integers, scales and zero points 0, groups in input order (`spec` checked by the
    /// caller).
    pub fn zeroed(rows: usize, cols: usize, spec: IntSpec) -> IntMatrix {
        let n_groups = cols / spec.group_len(cols).max(1);
        IntMatrix {
            rows,
            cols,
            spec,
            q: vec![0; rows * cols],
            scales: vec![0.0; rows * n_groups],
            zeros: vec![0; rows * n_groups],
            g_idx: None,
        }
    }

    /// Round-to-nearest quantization of a `(rows, cols)` row-major matrix.
    pub fn rtn(w: &[f32], rows: usize, cols: usize, spec: IntSpec) -> Result<IntMatrix> {
        spec.check(cols)?;
        if w.len() != rows * cols {
            return Err(Error::SizeMismatch {
                what: "weights to quantize",
                expected: rows * cols,
                got: w.len(),
            });
        }
        let g = spec.group_len(cols);
        let n_groups = cols / g;
        let maxq = spec.maxq();
        let mut m = IntMatrix::zeroed(rows, cols, spec);
        for r in 0..rows {
            for gi in 0..n_groups {
                let span = r * cols + gi * g..r * cols + (gi + 1) * g;
                let p = GroupParams::of(&w[span.clone()], &spec);
                m.scales[r * n_groups + gi] = p.scale;
                m.zeros[r * n_groups + gi] = p.zero;
                for (q, &v) in m.q[span.clone()].iter_mut().zip(&w[span]) {
                    *q = p.quantize(v, maxq);
                }
            }
        }
        Ok(m)
    }

    /// Checks that the parts have the sizes of the shape and that every value fits its bits.
    pub fn validate(&self) -> Result<()> {
        self.spec.check(self.cols)?;
        let n = self.rows * self.n_groups();
        for (what, got, expected) in [
            ("integer weights", self.q.len(), self.rows * self.cols),
            ("scales", self.scales.len(), n),
            ("zero points", self.zeros.len(), n),
        ] {
            if got != expected {
                return Err(Error::SizeMismatch {
                    what,
                    expected,
                    got,
                });
            }
        }
        let maxq = self.spec.maxq();
        if self.q.iter().chain(&self.zeros).any(|&v| v as u32 > maxq) {
            return Err(Error::Invalid(format!(
                "a value does not fit in {} bits",
                self.spec.bits
            )));
        }
        if let Some(g) = &self.g_idx {
            let n_groups = self.n_groups() as u32;
            if g.len() != self.cols || g.iter().any(|&x| x >= n_groups) {
                return Err(Error::Invalid(format!(
                    "g_idx must give one group below {n_groups} for each of {} columns",
                    self.cols
                )));
            }
        }
        Ok(())
    }

    /// The `(rows, cols)` f32 weights this stands for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let p = self.params(r, self.group_of(c));
                out[r * self.cols + c] = p.dequantize(self.q[r * self.cols + c]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtn_round_trips_within_a_step() {
        let (rows, cols) = (3, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for sym in [false, true] {
            for bits in [2, 3, 4, 8] {
                for group_size in [Some(32), None] {
                    let spec = IntSpec {
                        bits,
                        group_size,
                        sym,
                    };
                    let m = IntMatrix::rtn(&w, rows, cols, spec).unwrap();
                    m.validate().unwrap();
                    let d = m.dequantize();
                    for r in 0..rows {
                        for c in 0..cols {
                            let p = m.params(r, m.group_of(c));
                            let err = (d[r * cols + c] - w[r * cols + c]).abs();
                            // The grid's ends sit within a step of the group's range (the
                            // rounded zero point, the f16 scale, symmetric clipping).
                            let bound = p.scale * 1.001;
                            assert!(err <= bound, "bits {bits} sym {sym}: {err} > {bound}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn grid_contains_zero_and_ties_go_to_even() {
        let spec = IntSpec {
            bits: 4,
            group_size: None,
            sym: false,
        };
        let p = GroupParams::from_range(1.0, 16.0, &spec);
        assert_eq!(p.zero, 0);
        assert_eq!(p.scale, f16_round(16.0 / 15.0));
        assert_eq!(p.fake(0.0, 15), 0.0);
        let half = GroupParams {
            scale: 1.0,
            zero: 0,
        };
        assert_eq!(half.quantize(2.5, 15), 2);
        assert_eq!(half.quantize(3.5, 15), 4);
    }
}
