//! Matrix multiplication through the `gemm` crate (blocked, SIMD, multi-threaded), which reads
//! strided operands in place, so a transposed weight view costs nothing.
//! `reference_matmul` is the plain triple loop the tests compare against.

use gemm::Parallelism;

use crate::{DType, Error, Result, Tensor};

/// Threads gemm may use: rayon's current pool size, and none for small products where
/// spawning costs more than it saves.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// `dst (m, n) = lhs (m, k) · rhs (k, n)` on raw strided f32 slices.
///
/// Strides are in elements; `lhs[i*lhs_rs + p*lhs_cs]`, `rhs[p*rhs_rs + j*rhs_cs]`, and `dst`
/// is written row-major with row stride `n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    dst: &mut [f32],
    threads: bool,
) {
    assert!(dst.len() >= m * n, "gemm_f32: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(
        last(lhs_rs, lhs_cs, m, k) < lhs.len(),
        "gemm_f32: lhs out of bounds"
    );
    assert!(
        last(rhs_rs, rhs_cs, k, n) < rhs.len(),
        "gemm_f32: rhs out of bounds"
    );
    let par = if threads {
        parallelism(m, n, k)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above prove every element gemm reads lies inside `lhs` and `rhs`, and
    // `dst` holds m*n elements written with row stride n; the slices are borrowed for the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (m, k) = lhs.dims2("matmul")?;
    let (k2, n) = rhs.dims2("matmul")?;
    if k != k2 {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            lhs: lhs.dims().to_vec(),
            rhs: rhs.dims().to_vec(),
        });
    }
    // Compute in f32; f16/bf16 operands are widened (keeps their strides by going contiguous).
    let view = |t: &Tensor| -> (Tensor, usize, usize) {
        if t.dtype() == DType::F32 {
            let l = t.layout();
            (t.clone(), l.strides[0], l.strides[1])
        } else {
            let c = t.to_f32();
            let s = c.layout().strides.clone();
            (c, s[0], s[1])
        }
    };
    let (l, lrs, lcs) = view(lhs);
    let (r, rrs, rcs) = view(rhs);
    let lslice = raw_slice(&l)?;
    let rslice = raw_slice(&r)?;
    let mut out = vec![0.0f32; m * n];
    gemm_f32(m, n, k, lslice, lrs, lcs, rslice, rrs, rcs, &mut out, true);
    Tensor::from_vec(out, [m, n])
}

/// The f32 storage a (possibly strided) f32 tensor views, starting at its offset.
fn raw_slice(t: &Tensor) -> Result<&[f32]> {
    t.storage_f32().ok_or(Error::DType {
        op: "matmul",
        dtype: t.dtype(),
    })
}

/// The plain triple loop, for tests.
pub fn reference_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}
