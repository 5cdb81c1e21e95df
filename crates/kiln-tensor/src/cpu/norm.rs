//! RMSNorm and LayerNorm over the last dimension, accumulated in f32 as transformers does
//! (it upcasts to f32 before computing the variance).

use rayon::prelude::*;

use super::vec::sum_squares;
use crate::{Error, Result, Tensor};

/// Below this many elements a norm runs on the calling thread (a decode step's single row).
const PAR_THRESHOLD: usize = 1 << 14;

fn check_weight(op: &'static str, x: &Tensor, w: &Tensor) -> Result<usize> {
    let cols = *x.dims().last().unwrap_or(&0);
    if w.dims() != [cols] {
        return Err(Error::ShapeMismatch {
            op,
            lhs: x.dims().to_vec(),
            rhs: w.dims().to_vec(),
        });
    }
    Ok(cols)
}

/// `out = x / sqrt(mean(x²) + eps) * w` for one row.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = sum_squares(x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

pub fn layer_norm_row(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (i, o) in out.iter_mut().enumerate() {
        *o = (x[i] - mean) * inv * w[i] + b.map_or(0.0, |b| b[i]);
    }
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let cols = check_weight("rms_norm", x, w)?;
    let xs = x.to_f32();
    let ws = w.to_f32();
    let (xs, ws) = (xs.as_f32_slice()?, ws.as_f32_slice()?);
    let mut out = vec![0.0; xs.len()];
    if cols > 0 && xs.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(cols)
            .zip(xs.par_chunks(cols))
            .for_each(|(o, r)| rms_norm_row(r, ws, eps, o));
    } else if cols > 0 {
        out.chunks_mut(cols)
            .zip(xs.chunks(cols))
            .for_each(|(o, r)| rms_norm_row(r, ws, eps, o));
    }
    Tensor::from_vec(out, x.shape().clone())
}

pub fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let cols = check_weight("layer_norm", x, w)?;
    if let Some(b) = b {
        check_weight("layer_norm", x, b)?;
    }
    let xs = x.to_f32();
    let ws = w.to_f32();
    let bs = b.map(|b| b.to_f32());
    let (xs, ws) = (xs.as_f32_slice()?, ws.as_f32_slice()?);
    let bs = match &bs {
        Some(b) => Some(b.as_f32_slice()?),
        None => None,
    };
    let mut out = vec![0.0; xs.len()];
    if cols > 0 && xs.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(cols)
            .zip(xs.par_chunks(cols))
            .for_each(|(o, r)| layer_norm_row(r, ws, bs, eps, o));
    } else if cols > 0 {
        out.chunks_mut(cols)
            .zip(xs.chunks(cols))
            .for_each(|(o, r)| layer_norm_row(r, ws, bs, eps, o));
    }
    Tensor::from_vec(out, x.shape().clone())
}
