//! Rotary position embeddings applied in place to packed `(n_tokens, n_heads, head_dim)` rows.
//!
//! Two pairings exist in checkpoints: `Half` (GPT-NeoX / Hugging Face LLaMA: element i pairs with
//! i + head_dim/2, "rotate_half") and `Interleaved` (original GPT-J / Meta: 2i pairs with 2i+1).
//! Frequencies (already scaled by whatever long-context scheme the model uses) come from the
//! caller; this kernel only rotates. Angles are `pos * inv_freq` in f32, as transformers computes
//! them, so results agree at long positions too.

pub use crate::op::RopeStyle;

/// Rotates the first `2 * inv_freq.len()` dims of each head (partial rotary leaves the rest).
/// `mscale` multiplies cos and sin (YaRN's attention factor; 1 otherwise).
pub fn apply_rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
    mscale: f32,
    style: RopeStyle,
) {
    let half = inv_freq.len();
    let mut cos = vec![0.0f32; half];
    let mut sin = vec![0.0f32; half];
    for (t, &pos) in positions.iter().enumerate() {
        for i in 0..half {
            let angle = pos as f32 * inv_freq[i];
            cos[i] = angle.cos() * mscale;
            sin[i] = angle.sin() * mscale;
        }
        let row = &mut x[t * n_heads * head_dim..(t + 1) * n_heads * head_dim];
        for head in row.chunks_mut(head_dim) {
            match style {
                RopeStyle::Half => {
                    let (a, b) = head[..2 * half].split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x1 * cos[i] + x0 * sin[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * cos[i] - x1 * sin[i];
                        head[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
                    }
                }
            }
        }
    }
}
