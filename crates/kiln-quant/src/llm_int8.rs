//! LLM.int8 (Dettmers et al., 2022): vector-wise int8 matmul with a mixed-precision
//! decomposition for outlier features.
//!
//! ```text
//! weight (rows = out, cols = in), one scale per output row:
//!   q[o, c] = round(127 · w[o, c] / absmax_c |w[o, ·]|)  in [-127, 127]      i8, row-major
//!   s_w[o]  = absmax |w[o, ·]| / 127                                           f32
//!
//! y = x · Wᵀ for a step x (n, cols):
//!   O      = { c : max_t |x[t, c]| >= threshold }        outlier feature columns, per step
//!   s_x[t] = absmax_{c ∉ O} |x[t, c]| / 127,  xq[t, c] = round(x[t, c] / s_x[t])   (c ∉ O)
//!   y[t, o] = s_x[t] · s_w[o] · Σ_{c ∉ O} xq[t, c] · q[o, c]                 i32 accumulate
//!           + Σ_{c ∈ O} f16(x[t, c]) · w16[o, c]                             16-bit inputs
//! ```
//!
//! Outliers — a few hidden dimensions whose activations are tens of times larger than the
//! rest, which appear in large transformers — would set every token's int8 scale and flush
//! the other features to zero; LLM.int8 multiplies those columns in 16-bit instead, with the
//! weights' 16-bit values `w16` (the paper's X_f16 · W_f16): an int8 weight column multiplied
//! by a feature 20 times larger carries 20 times the rounding error into the output. Which
//! columns are outliers is known only per step, so the weight is kept in both forms, 3 bytes
//! a weight against f32's 4 (bitsandbytes' `has_fp16_weights` layout). With no threshold
//! (`None`) this is plain absmax int8 ("vector-wise" quantization), the baseline the paper
//! improves on.

use half::f16;

use crate::{Error, Result};

/// An `(rows, cols)` weight in LLM.int8's storage: int8 rows with one f32 scale each, and the
/// weight in f16 for the outlier columns.
#[derive(Debug, Clone)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub w16: Vec<f16>,
}

impl Int8Rows {
    /// Row-wise absmax quantization of a row-major `(rows, cols)` matrix.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<Int8Rows> {
        if w.len() != rows * cols {
            return Err(Error::SizeMismatch {
                what: "LLM.int8 weight",
                expected: rows * cols,
                got: w.len(),
            });
        }
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "LLM.int8 weight holds a non-finite value ({bad})"
            )));
        }
        let mut q = vec![0i8; rows * cols];
        let mut scales = vec![0.0f32; rows];
        for ((row, qrow), s) in w
            .chunks_exact(cols.max(1))
            .zip(q.chunks_exact_mut(cols.max(1)))
            .zip(&mut scales)
        {
            let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            *s = absmax / 127.0;
            if absmax > 0.0 {
                let inv = 127.0 / absmax;
                for (q, &v) in qrow.iter_mut().zip(row) {
                    *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
        Ok(Int8Rows {
            rows,
            cols,
            q,
            scales,
            w16: w.iter().map(|&v| f16::from_f32(v)).collect(),
        })
    }

    /// The weights as f32 (`s_w[o] · q[o, c]`).
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .chunks_exact(self.cols.max(1))
            .zip(&self.scales)
            .flat_map(|(r, &s)| r.iter().map(move |&q| q as f32 * s))
            .collect()
    }

    /// The outlier feature columns of a step `x (n, cols)`: some `|x|` reaches `threshold`.
    pub fn outlier_columns(x: &[f32], cols: usize, threshold: f32) -> Vec<usize> {
        let mut out = vec![false; cols];
        for row in x.chunks_exact(cols.max(1)) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o |= v.abs() >= threshold;
            }
        }
        (0..cols).filter(|&c| out[c]).collect()
    }

    /// `y (n, rows) = x (n, cols) · Wᵀ` as the module doc defines it; `threshold: None` is
    /// absmax int8 without the decomposition. Returns the number of outlier columns.
    pub fn matmul(
        &self,
        x: &[f32],
        n: usize,
        threshold: Option<f32>,
        y: &mut [f32],
    ) -> Result<usize> {
        let (rows, cols) = (self.rows, self.cols);
        if x.len() != n * cols || y.len() != n * rows {
            return Err(Error::SizeMismatch {
                what: "LLM.int8 matmul operands",
                expected: n * cols,
                got: x.len(),
            });
        }
        let outliers = match threshold {
            Some(t) if t > 0.0 => Self::outlier_columns(x, cols, t),
            _ => Vec::new(),
        };
        let mut is_outlier = vec![false; cols];
        outliers.iter().for_each(|&c| is_outlier[c] = true);
        // Each token's int8 row (outlier columns zeroed) and scale.
        let mut xq = vec![0i8; n * cols];
        let mut sx = vec![0.0f32; n];
        for t in 0..n {
            let row = &x[t * cols..(t + 1) * cols];
            let absmax = row
                .iter()
                .zip(&is_outlier)
                .filter(|(_, &o)| !o)
                .fold(0.0f32, |m, (v, _)| m.max(v.abs()));
            sx[t] = absmax / 127.0;
            if absmax > 0.0 && absmax.is_finite() {
                let inv = 127.0 / absmax;
                for ((q, &v), &o) in xq[t * cols..(t + 1) * cols]
                    .iter_mut()
                    .zip(row)
                    .zip(&is_outlier)
                {
                    if !o {
                        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            }
        }
        // The 16-bit side: the outlier columns of x and of the dequantized weight.
        let x16: Vec<f32> = (0..n)
            .flat_map(|t| outliers.iter().map(move |&c| (t, c)))
            .map(|(t, c)| f16::from_f32(x[t * cols + c]).to_f32())
            .collect();
        let w16: Vec<f32> = (0..rows)
            .flat_map(|o| outliers.iter().map(move |&c| (o, c)))
            .map(|(o, c)| self.w16[o * cols + c].to_f32())
            .collect();
        let k = outliers.len();
        let out = SyncPtr(y.as_mut_ptr());
        let chunk = 16usize;
        let n_chunks = rows.div_ceil(chunk);
        crate::parallel::parallel_for(n_chunks, &|ci| {
            let out = &out;
            for o in ci * chunk..((ci + 1) * chunk).min(rows) {
                let wq = &self.q[o * cols..(o + 1) * cols];
                for t in 0..n {
                    let dot = dot_i8(&xq[t * cols..(t + 1) * cols], wq);
                    let mut v = dot as f32 * sx[t] * self.scales[o];
                    for j in 0..k {
                        v += x16[t * k + j] * w16[o * k + j];
                    }
                    // SAFETY: element (t, o) is written by the one chunk owning row o.
                    unsafe { *out.0.add(t * rows + o) = v };
                }
            }
        });
        Ok(k)
    }
}

/// A raw pointer the chunks of one `parallel_for` write disjoint elements through.
struct SyncPtr(*mut f32);
// SAFETY: each chunk writes only the output columns of the rows it owns (see `matmul`).
unsafe impl Sync for SyncPtr {}

/// `Σ a[i] · b[i]` in i32 (widened to i16 products in lanes the compiler vectorises).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] as i32 * y[i] as i32;
        }
    }
    let tail: i32 = ra.iter().zip(rb).map(|(&x, &y)| x as i32 * y as i32).sum();
    acc.iter().sum::<i32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &Int8Rows, x: &[f32], n: usize, threshold: Option<f32>) -> Vec<f64> {
        let (rows, cols) = (w.rows, w.cols);
        let outl: Vec<bool> = (0..cols)
            .map(|c| threshold.is_some_and(|t| (0..n).any(|r| x[r * cols + c].abs() >= t)))
            .collect();
        let mut y = vec![0.0f64; n * rows];
        for t in 0..n {
            let row = &x[t * cols..(t + 1) * cols];
            let absmax = (0..cols)
                .filter(|&c| !outl[c])
                .fold(0.0f32, |m, c| m.max(row[c].abs()));
            let s = absmax / 127.0;
            for o in 0..rows {
                let mut int = 0i64;
                let mut hi = 0.0f64;
                for c in 0..cols {
                    let wq = w.q[o * cols + c];
                    if outl[c] {
                        let a = f16::from_f32(row[c]).to_f32() as f64;
                        let b = w.w16[o * cols + c].to_f32() as f64;
                        hi += a * b;
                    } else if absmax > 0.0 {
                        int += (row[c] * (127.0 / absmax)).round() as i64 * wq as i64;
                    }
                }
                y[t * rows + o] = int as f64 * s as f64 * w.scales[o] as f64 + hi;
            }
        }
        y
    }

    fn data(rows: usize, cols: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
            .collect();
        let mut x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 400.0)
            .collect();
        // Two outlier features.
        for t in 0..n {
            x[t * cols + 3] *= 20.0;
            x[t * cols + cols - 5] *= 25.0;
        }
        (w, x)
    }

    #[test]
    fn matches_the_definition_with_and_without_outliers() -> Result<()> {
        let (rows, cols, n) = (37, 70, 5);
        let (w, x) = data(rows, cols, n);
        let q = Int8Rows::quantize(&w, rows, cols)?;
        for threshold in [None, Some(6.0)] {
            let mut y = vec![0.0; n * rows];
            let k = q.matmul(&x, n, threshold, &mut y)?;
            assert_eq!(k, if threshold.is_some() { 2 } else { 0 });
            let want = reference(&q, &x, n, threshold);
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{a} vs {b}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn the_decomposition_is_what_saves_outliers() -> Result<()> {
        let (rows, cols, n) = (32, 128, 4);
        let (w, x) = data(rows, cols, n);
        let exact: Vec<f64> = (0..n)
            .flat_map(|t| (0..rows).map(move |o| (t, o)))
            .map(|(t, o)| {
                (0..cols)
                    .map(|c| x[t * cols + c] as f64 * w[o * cols + c] as f64)
                    .sum()
            })
            .collect();
        let q = Int8Rows::quantize(&w, rows, cols)?;
        let err = |threshold| -> Result<f64> {
            let mut y = vec![0.0; n * rows];
            q.matmul(&x, n, threshold, &mut y)?;
            let num: f64 = y
                .iter()
                .zip(&exact)
                .map(|(a, b)| (*a as f64 - b).powi(2))
                .sum();
            Ok((num / exact.iter().map(|b| b * b).sum::<f64>()).sqrt())
        };
        let (absmax, mixed) = (err(None)?, err(Some(6.0))?);
        assert!(mixed < 0.01, "LLM.int8 relative error {mixed}");
        assert!(absmax > 5.0 * mixed, "absmax {absmax} vs LLM.int8 {mixed}");
        Ok(())
    }

    #[test]
    fn bad_input_is_an_error() -> Result<()> {
        assert!(Int8Rows::quantize(&[1.0, f32::NAN], 1, 2).is_err());
        assert!(Int8Rows::quantize(&[1.0; 3], 1, 2).is_err());
        let q = Int8Rows::quantize(&[1.0; 4], 2, 2)?;
        assert!(q.matmul(&[1.0; 3], 2, None, &mut [0.0; 4]).is_err());
        let mut y = [0.0; 4];
        q.matmul(&[0.0; 4], 2, Some(6.0), &mut y)?;
        assert_eq!(y, [0.0; 4]);
        Ok(())
    }
}
