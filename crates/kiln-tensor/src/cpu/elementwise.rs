//! Elementwise unary and binary ops; binary ops broadcast a right operand whose shape equals
//! the trailing dimensions of the left one (a bias row, a per-channel scale).

use rayon::prelude::*;

use crate::{Error, Result, Tensor};

const PAR_THRESHOLD: usize = 1 << 15;

pub fn unary(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let mut data = x.to_vec_f32();
    if data.len() >= PAR_THRESHOLD {
        data.par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
    } else {
        data.iter_mut().for_each(|v| *v = f(*v));
    }
    Tensor::from_vec(data, x.shape().clone()).expect("unary keeps the element count")
}

pub fn binary(
    lhs: &Tensor,
    rhs: &Tensor,
    op: &'static str,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    let (ld, rd) = (lhs.dims(), rhs.dims());
    let broadcast_ok = rd.len() <= ld.len() && ld[ld.len() - rd.len()..] == *rd;
    if !broadcast_ok {
        return Err(Error::ShapeMismatch {
            op,
            lhs: ld.to_vec(),
            rhs: rd.to_vec(),
        });
    }
    let mut data = lhs.to_vec_f32();
    let r = rhs.to_f32();
    let r = r.as_f32_slice()?;
    if r.is_empty() {
        return Tensor::from_vec(data, lhs.shape().clone());
    }
    let apply = |chunk: &mut [f32]| {
        for (a, &b) in chunk.iter_mut().zip(r) {
            *a = f(*a, b);
        }
    };
    if data.len() >= PAR_THRESHOLD {
        data.par_chunks_mut(r.len()).for_each(apply);
    } else {
        data.chunks_mut(r.len()).for_each(apply);
    }
    Tensor::from_vec(data, lhs.shape().clone())
}

/// `a[i] += b[i]` on slices (residual adds in the hot path, no allocation).
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}
