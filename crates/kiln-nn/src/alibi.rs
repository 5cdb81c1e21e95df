//! ALiBi (Press et al., "Train Short, Test Long", 2021): no position embeddings; each attention
//! head adds `slope * (j - i)` to the score of query position `i` and key position `j`, a linear
//! penalty on distance that extrapolates past the training length.
//!
//! Reference for the slopes: the paper's recipe as transformers `_get_alibi_slopes`
//! (models/bloom/modeling_bloom.py). For `n` a power of two the slopes are the geometric sequence
//! `2^(-8/n), 2^(-16/n), ..., 2^-8`. Otherwise the first `2^floor(log2 n)` heads take that
//! power's sequence and the remaining heads take every other slope (the odd powers) of the
//! sequence for twice that power. The bias itself is applied inside the attention kernel
//! (`AttnParams::alibi_slopes`); transformers adds `slope * j` instead, which differs by a
//! constant per query row and so gives the same softmax.

/// Per-head ALiBi slopes.
#[derive(Debug, Clone, PartialEq)]
pub struct Alibi {
    slopes: Vec<f32>,
}

impl Alibi {
    /// The paper's slopes for `n_heads` heads (any count, not only powers of two).
    pub fn new(n_heads: usize) -> Alibi {
        // The largest power of two <= n_heads (1 for n_heads == 0, which yields no slopes).
        let pow2 = if n_heads == 0 {
            1
        } else {
            1usize << n_heads.ilog2()
        };
        // 2^(-8/n) as a power of two: the sequence for n heads is ratio^1..=ratio^n.
        let geometric = |n: usize| {
            let ratio = 2f64.powf(-8.0 / n as f64);
            move |k: usize| ratio.powi(k as i32) as f32
        };
        let mut slopes: Vec<f32> = (1..=pow2).map(geometric(pow2)).collect();
        let extra = geometric(2 * pow2);
        slopes.extend((0..n_heads.saturating_sub(pow2).min(pow2)).map(|i| extra(2 * i + 1)));
        slopes.truncate(n_heads);
        Alibi { slopes }
    }

    pub fn slopes(&self) -> &[f32] {
        &self.slopes
    }
}

#[cfg(test)]
mod tests {
    use super::Alibi;

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{got:?} vs {want:?}");
        }
    }

    /// Values printed by transformers 5.24 `_get_alibi_slopes(n, "cpu")`.
    #[test]
    fn slopes_match_transformers_for_any_head_count() {
        close(Alibi::new(1).slopes(), &[0.00390625]);
        close(Alibi::new(3).slopes(), &[0.0625, 0.00390625, 0.25]);
        close(
            Alibi::new(6).slopes(),
            &[0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125],
        );
        close(
            Alibi::new(12).slopes(),
            &[
                0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625, 0.70710677,
                0.35355338, 0.17677669, 0.08838834,
            ],
        );
        let s16 = Alibi::new(16);
        close(&s16.slopes()[..3], &[0.70710677, 0.5, 0.35355338]);
        close(&s16.slopes()[15..], &[0.00390625]);
        assert!(Alibi::new(0).slopes().is_empty());
    }
}
