//! Fixed sinusoidal positions (Vaswani et al. 2017, section 3.5), in the layout MarianMTModel
//! uses: for position `p` and `i < dim/2`, column `i` holds `sin(p / 10000^(2i/dim))` and column
//! `dim/2 + i` holds `cos` of the same angle — halves, not interleaved pairs.
//!
//! Reference: transformers `models/marian/modeling_marian.py`
//! (`MarianSinusoidalPositionalEmbedding.create_weight`), which computes the angles in f64
//! (numpy) and stores f32; so does this. Checkpoints may or may not carry the table; it is
//! always recomputed here, so both load the same.

use kiln_tensor::Tensor;

use crate::{Error, Placement, Result};

#[derive(Clone)]
pub struct SinusoidalPositions {
    /// `(n_positions, dim)`, on the model's device.
    table: Tensor,
    n_positions: usize,
    dim: usize,
}

impl SinusoidalPositions {
    /// The table for `n_positions` positions of `dim` values, placed as the model's weights.
    pub fn new(
        n_positions: usize,
        dim: usize,
        placement: Placement,
    ) -> Result<SinusoidalPositions> {
        // Odd dims: transformers puts ceil(dim/2) sines first; the formula below does the same.
        let n_sin = dim.div_ceil(2);
        let mut table = vec![0.0f32; n_positions * dim];
        for p in 0..n_positions {
            let row = &mut table[p * dim..(p + 1) * dim];
            for j in 0..dim {
                // numpy: pos / 10000 ** (2 * (j // 2) / dim), sin of even j, cos of odd j.
                let angle = p as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
                if j % 2 == 0 {
                    row[j / 2] = angle.sin() as f32;
                } else {
                    row[n_sin + j / 2] = angle.cos() as f32;
                }
            }
        }
        Ok(SinusoidalPositions {
            table: placement.tensor(Tensor::from_vec(table, [n_positions, dim])?)?,
            n_positions,
            dim,
        })
    }

    pub fn n_positions(&self) -> usize {
        self.n_positions
    }

    /// `(n,) positions -> (n, dim)`; a position past the table is an error.
    pub fn forward(&self, positions: &[usize]) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(positions.len());
        for &p in positions {
            if p >= self.n_positions {
                return Err(Error::Config(format!(
                    "position {p} is past the {} sinusoidal positions",
                    self.n_positions
                )));
            }
            ids.push(p as u32);
        }
        debug_assert_eq!(self.table.dims()[1], self.dim);
        Ok(self.table.gather_rows(&ids)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_of_sines_then_cosines() {
        let s = SinusoidalPositions::new(5, 6, Placement::default()).unwrap();
        let row = s.forward(&[3]).unwrap().to_vec_f32();
        for i in 0..3 {
            let angle = 3.0f64 / 10000f64.powf(2.0 * i as f64 / 6.0);
            assert!((row[i] as f64 - angle.sin()).abs() < 1e-6);
            assert!((row[3 + i] as f64 - angle.cos()).abs() < 1e-6);
        }
        assert!(s.forward(&[5]).is_err());
    }
}
