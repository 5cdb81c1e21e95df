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

/// `gate[i] = act(gate[i]) * up[i]` in place: the gated MLP's hidden state without the two
/// copies `act(gate)` and `* up` would make as tensor ops (`up` as long as `gate`). The loop is
/// compiled three times, for AVX-512, AVX2+FMA and the baseline, and picked at run time: with
/// a branch-free `act` (`activation::silu`) LLVM vectorises it to the machine's width
/// (measured for SiLU on Zen 4: 0.6 ns per element with AVX-512 vs 3.4 ns with libm's `expf`).
pub fn gated_in_place(gate: &mut [f32], up: &[f32], act: impl Fn(f32) -> f32 + Sync) {
    assert_eq!(gate.len(), up.len(), "gated_in_place: gate and up sizes");
    let apply = |(g, u): (&mut [f32], &[f32])| gated_loop(g, u, &act);
    if gate.len() >= PAR_THRESHOLD {
        gate.par_chunks_mut(4096)
            .zip(up.par_chunks(4096))
            .for_each(apply);
    } else {
        apply((gate, up));
    }
}

fn gated_loop(g: &mut [f32], u: &[f32], act: &impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above).
            return unsafe { gated_avx512(g, u, act) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are available (checked above).
            return unsafe { gated_avx2(g, u, act) };
        }
    }
    gated_body(g, u, act)
}

#[inline(always)]
fn gated_body(g: &mut [f32], u: &[f32], act: &impl Fn(f32) -> f32) {
    for (x, &y) in g.iter_mut().zip(u) {
        *x = act(*x) * y;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gated_avx512(g: &mut [f32], u: &[f32], act: &impl Fn(f32) -> f32) {
    gated_body(g, u, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2(g: &mut [f32], u: &[f32], act: &impl Fn(f32) -> f32) {
    gated_body(g, u, act)
}

/// `a[i] += b[i]` on slices (residual adds in the hot path, no allocation).
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}
