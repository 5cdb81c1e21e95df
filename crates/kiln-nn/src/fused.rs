//! Loading projections stored in other layouts than `(out, in)` per projection: GPT-2's Conv1D
//! (`(in, out)`, i.e. transposed) and fused q/k/v matrices (GPT-2 `c_attn`, BLOOM
//! `query_key_value`), split into separate [`Linear`]s once at load time so the attention layer
//! stays one code path for every family.
//!
//! Rejected alternative: keeping the fused matrix and running one gemm, then slicing its output
//! per row; it saves two small gemm calls per layer but needs a second attention entry point.
//! Quantized (GGUF) fused weights are dequantized here; splitting keeps dense f32.

use kiln_tensor::{DType, Tensor};

use crate::weights::{Placement, Weights};
use crate::{Error, Linear, Result};

/// How the `3 * n_heads * head_dim` output rows of a fused q/k/v projection are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// All of q, then all of k, then all of v (GPT-2 `c_attn`).
    Blocked,
    /// Per head: that head's q, k, v rows, i.e. `(n_heads, 3, head_dim)` (BLOOM, GPT-NeoX).
    PerHead { n_heads: usize, head_dim: usize },
}

/// `{name}.weight` stored `(in, out)` (transformers `Conv1D`), as a [`Linear`] `(out, in)`. A
/// GGUF file already holds it `(out, in)` (llama.cpp's converter transposes it), and keeps it
/// quantized.
pub fn load_conv1d(
    w: &Weights,
    name: &str,
    in_features: usize,
    out_features: usize,
    bias: bool,
) -> Result<Linear> {
    if w.is_gguf() {
        return Linear::load(w, name, in_features, out_features, bias);
    }
    let (weight, bias) = load_conv1d_parts(w, name, in_features, out_features, bias)?;
    place_dense(w, weight, bias)
}

/// A dense [`Linear`] from host tensors built here, stored in `w`'s placement.
fn place_dense(w: &Weights, weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
    let p = w.placement();
    Linear::from_dense(
        p.linear(None, weight)?,
        bias.map(|b| p.tensor(b)).transpose()?,
    )
}

/// Conv1D weight transposed to `(out, in)`, and its bias.
fn load_conv1d_parts(
    w: &Weights,
    name: &str,
    in_features: usize,
    out_features: usize,
    bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let w = w.host().pp(name);
    let t = w
        .matrix("weight", in_features, out_features)?
        .to_dtype(DType::F32)?;
    let src = t.as_f32_slice()?;
    let mut out = vec![0.0f32; src.len()];
    for (i, row) in src.chunks_exact(out_features).enumerate() {
        for (o, &x) in row.iter().enumerate() {
            out[o * in_features + i] = x;
        }
    }
    let bias = if bias {
        Some(w.tensor("bias", &[out_features])?)
    } else {
        None
    };
    Ok((Tensor::from_vec(out, [out_features, in_features])?, bias))
}

/// A fused q/k/v projection `{name}` stored `(3 * d, hidden)` (`Linear` layout), split into
/// q, k, v projections `(d, hidden)` each, `d = n_heads * head_dim`.
pub fn load_fused_qkv(
    w: &Weights,
    name: &str,
    hidden: usize,
    d: usize,
    layout: QkvLayout,
    bias: bool,
) -> Result<[Linear; 3]> {
    let p = w.host().pp(name);
    let weight = p.matrix("weight", 3 * d, hidden)?.to_dtype(DType::F32)?;
    let bias = if bias {
        Some(p.tensor("bias", &[3 * d])?)
    } else {
        None
    };
    split_into(w.placement(), &weight, bias.as_ref(), d, layout)
}

/// GPT-2's `c_attn`: a Conv1D `(hidden, 3 * d)` holding q | k | v, split into three projections
/// (in GGUF already `(3 * d, hidden)`).
pub fn load_conv1d_qkv(w: &Weights, name: &str, hidden: usize, d: usize) -> Result<[Linear; 3]> {
    if w.is_gguf() {
        return load_fused_qkv(w, name, hidden, d, QkvLayout::Blocked, true);
    }
    let (weight, bias) = load_conv1d_parts(w, name, hidden, 3 * d, true)?;
    split_into(w.placement(), &weight, bias.as_ref(), d, QkvLayout::Blocked)
}

/// BLOOM's `query_key_value`: rows `(n_heads, 3, head_dim)` in Hugging Face checkpoints, which
/// llama.cpp's converter regroups to q | k | v in GGUF.
pub fn load_per_head_qkv(
    w: &Weights,
    name: &str,
    hidden: usize,
    n_heads: usize,
    head_dim: usize,
) -> Result<[Linear; 3]> {
    let layout = if w.is_gguf() {
        QkvLayout::Blocked
    } else {
        QkvLayout::PerHead { n_heads, head_dim }
    };
    load_fused_qkv(w, name, hidden, n_heads * head_dim, layout, true)
}

/// Splits `weight (3 * d, hidden)` and `bias (3 * d,)` into q, k, v by `layout`.
pub fn split_qkv(
    weight: &Tensor,
    bias: Option<&Tensor>,
    d: usize,
    layout: QkvLayout,
) -> Result<[Linear; 3]> {
    split_into(Placement::default(), weight, bias, d, layout)
}

/// [`split_qkv`] of host tensors, the parts stored in `placement`.
fn split_into(
    placement: Placement,
    weight: &Tensor,
    bias: Option<&Tensor>,
    d: usize,
    layout: QkvLayout,
) -> Result<[Linear; 3]> {
    let (rows, hidden) = weight.dims2("split_qkv")?;
    let head_dim = match layout {
        QkvLayout::Blocked => d,
        QkvLayout::PerHead { n_heads, head_dim } => {
            if n_heads * head_dim != d {
                return Err(Error::Config(format!(
                    "fused qkv: {n_heads} heads x {head_dim} != {d}"
                )));
            }
            head_dim
        }
    };
    if rows != 3 * d || d == 0 {
        return Err(Error::Config(format!(
            "fused qkv: {rows} rows, expected 3 x {d}"
        )));
    }
    let weight = weight.to_f32();
    let bias = bias.map(|b| b.to_f32());
    let (w, b) = (
        weight.as_f32_slice()?,
        bias.as_ref().map(|b| b.as_f32_slice()).transpose()?,
    );
    // Source row of output row `r` of projection `which` (0 = q, 1 = k, 2 = v): for PerHead,
    // head r / head_dim's block of 3 * head_dim rows, then `which`'s slice of it.
    let src = |which: usize, r: usize| match layout {
        QkvLayout::Blocked => which * d + r,
        QkvLayout::PerHead { .. } => {
            (r / head_dim) * 3 * head_dim + which * head_dim + r % head_dim
        }
    };
    let part = |which: usize| -> Result<Linear> {
        let mut pw = Vec::with_capacity(d * hidden);
        for r in 0..d {
            let s = src(which, r);
            pw.extend_from_slice(&w[s * hidden..(s + 1) * hidden]);
        }
        let pb = match b {
            Some(b) => Some(placement.tensor(Tensor::from_vec(
                (0..d).map(|r| b[src(which, r)]).collect::<Vec<f32>>(),
                [d],
            )?)?),
            None => None,
        };
        Linear::from_dense(
            placement.linear(None, Tensor::from_vec(pw, [d, hidden])?)?,
            pb,
        )
    };
    Ok([part(0)?, part(1)?, part(2)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row r of a (rows, 2) matrix is [r, 10 r]; bias[r] = r.
    fn fused(rows: usize) -> (Tensor, Tensor) {
        let w: Vec<f32> = (0..rows)
            .flat_map(|r| [r as f32, 10.0 * r as f32])
            .collect();
        let b: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        (
            Tensor::from_vec(w, [rows, 2]).expect("shape"),
            Tensor::from_vec(b, [rows]).expect("shape"),
        )
    }

    /// Which source rows each projection picked, read back through forward on x = [1, 0].
    fn picked(l: &Linear) -> Vec<f32> {
        let x = Tensor::from_vec(vec![1.0f32, 0.0], [1, 2]).expect("shape");
        // weight row r contributes r (x[0] = 1), bias adds r again.
        l.forward(&x)
            .expect("forward")
            .to_vec_f32()
            .iter()
            .map(|v| v / 2.0)
            .collect()
    }

    #[test]
    fn blocked_and_per_head_splits_pick_the_right_rows() {
        let (w, b) = fused(12);
        let [q, k, v] = split_qkv(&w, Some(&b), 4, QkvLayout::Blocked).expect("split");
        assert_eq!(picked(&q), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(picked(&k), [4.0, 5.0, 6.0, 7.0]);
        assert_eq!(picked(&v), [8.0, 9.0, 10.0, 11.0]);
        // 2 heads of head_dim 2: rows (h0: q q k k v v)(h1: q q k k v v).
        let layout = QkvLayout::PerHead {
            n_heads: 2,
            head_dim: 2,
        };
        let [q, k, v] = split_qkv(&w, Some(&b), 4, layout).expect("split");
        assert_eq!(picked(&q), [0.0, 1.0, 6.0, 7.0]);
        assert_eq!(picked(&k), [2.0, 3.0, 8.0, 9.0]);
        assert_eq!(picked(&v), [4.0, 5.0, 10.0, 11.0]);
        assert!(split_qkv(&w, Some(&b), 5, QkvLayout::Blocked).is_err());
    }
}
