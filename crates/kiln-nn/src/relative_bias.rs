//! T5's relative position bias: a learned scalar per head and *bucket* of the distance from a
//! query to a key, added to the attention scores (which T5 does not scale by 1/sqrt(head_dim)).
//!
//! Reference: transformers `models/t5/modeling_t5.py` (`T5Attention._relative_position_bucket`,
//! `compute_bias`), from Raffel et al. 2020, section 2.1. Distances below `max_exact` (half the
//! buckets; in the encoder, half of each direction's half) get a bucket each; longer ones share
//! log-spaced buckets up to `max_distance`, past which they all fall in the last bucket. The
//! encoder's table is bidirectional (a key after the query has buckets of its own), the
//! decoder's is causal (only keys at or before the query). Only the first layer of a stack holds
//! the table; the stack computes the bias once per step and every layer reuses it.
//!
//! The bucket of a long distance goes through `ln` in f32, as transformers computes it, so
//! distances at bucket edges round the same way.

use std::sync::OnceLock;

use kiln_tensor::host_kv::RelativeBias;
use kiln_tensor::{Device, RelBias, Tensor};

use crate::weights::Weights;
use crate::Result;

#[derive(Clone)]
pub struct RelativePositionBias {
    /// `(num_buckets, n_heads)`, as the checkpoint's `relative_attention_bias.weight`.
    table: Vec<f32>,
    n_heads: usize,
    num_buckets: usize,
    max_distance: usize,
    bidirectional: bool,
}

impl RelativePositionBias {
    /// Loads `{name}.weight` `(num_buckets, n_heads)` under `w`.
    pub fn load(
        w: &Weights,
        name: &str,
        n_heads: usize,
        num_buckets: usize,
        max_distance: usize,
        bidirectional: bool,
    ) -> Result<RelativePositionBias> {
        let t = w.pp(name).tensor("weight", &[num_buckets, n_heads])?;
        Ok(RelativePositionBias {
            table: t.to_vec_f32(),
            n_heads,
            num_buckets,
            max_distance,
            bidirectional,
        })
    }

    /// The bucket of `rel = key position - query position`.
    pub fn bucket(&self, rel: isize) -> usize {
        let mut n = self.num_buckets;
        let mut base = 0;
        let dist = if self.bidirectional {
            n /= 2;
            if rel > 0 {
                base = n;
            }
            rel.unsigned_abs()
        } else {
            // Keys after the query share bucket 0 with distance 0 (the causal mask hides them).
            (-rel).max(0) as usize
        };
        let max_exact = n / 2;
        if dist < max_exact {
            return base + dist;
        }
        let log_ratio = (dist as f32 / max_exact as f32).ln()
            / (self.max_distance as f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (log_ratio * (n - max_exact) as f32) as usize;
        base + large.min(n - 1)
    }

    /// The bias of every head for distances `min_rel..=max_rel`, ready for the kernel.
    pub fn table(&self, min_rel: isize, max_rel: isize) -> PositionBias {
        let n_rel = (max_rel - min_rel + 1).max(0) as usize;
        let mut values = vec![0.0f32; self.n_heads * n_rel];
        for r in 0..n_rel {
            let b = self.bucket(min_rel + r as isize);
            for h in 0..self.n_heads {
                values[h * n_rel + r] = self.table[b * self.n_heads + h];
            }
        }
        PositionBias {
            values,
            min_rel,
            n_rel,
            on_device: OnceLock::new(),
        }
    }
}

/// A step's looked-up bias: `(n_heads, n_rel)` for distances from `min_rel` on.
#[derive(Debug, Clone)]
pub struct PositionBias {
    values: Vec<f32>,
    min_rel: isize,
    n_rel: usize,
    /// `values` on the step's device, uploaded by the first layer that asks.
    on_device: OnceLock<Tensor>,
}

impl PositionBias {
    /// The values as an `(n_heads, n_rel)` f32 tensor on `device`, uploaded once per step.
    pub fn values_on(&self, device: Device) -> Result<Tensor> {
        if let Some(t) = self.on_device.get().filter(|t| t.device() == device) {
            return Ok(t.clone());
        }
        let n_heads = self.values.len() / self.n_rel.max(1);
        let t = Tensor::from_vec(self.values.clone(), [n_heads, self.n_rel])?.to_device(device)?;
        let _ = self.on_device.set(t.clone());
        Ok(t)
    }

    /// The bias as [`Tensor::attention`] takes it, over `values` from [`Self::values_on`].
    pub fn args<'a>(&self, values: &'a Tensor) -> RelBias<'a> {
        RelBias {
            values,
            min_rel: self.min_rel,
            n_rel: self.n_rel,
        }
    }

    /// The host kernels' view (the CPU KV stores).
    pub(crate) fn as_kernel(&self) -> RelativeBias<'_> {
        RelativeBias {
            values: &self.values,
            min_rel: self.min_rel,
            n_rel: self.n_rel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpb(num_buckets: usize, max_distance: usize, bidirectional: bool) -> RelativePositionBias {
        RelativePositionBias {
            table: (0..num_buckets * 2).map(|i| i as f32).collect(),
            n_heads: 2,
            num_buckets,
            max_distance,
            bidirectional,
        }
    }

    /// Buckets printed by transformers' `_relative_position_bucket` for rel = -20..=20.
    #[test]
    fn buckets_match_transformers() {
        // bidirectional, 32 buckets, max distance 128 (T5 defaults)
        let enc = rpb(32, 128, true);
        let got: Vec<usize> = (-20..=20).map(|r| enc.bucket(r)).collect();
        let want = [
            10, 10, 10, 10, 10, 9, 9, 9, 9, 8, 8, 8, 8, 7, 6, 5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21,
            22, 23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 26,
        ];
        assert_eq!(got, want);
        // causal, 8 buckets, max distance 16: keys after the query are bucket 0
        let dec = rpb(8, 16, false);
        let got: Vec<usize> = (-20..=3).map(|r| dec.bucket(r)).collect();
        let want = [
            7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 4, 4, 3, 2, 1, 0, 0, 0, 0,
        ];
        assert_eq!(got, want);
    }
}
