//! Dense linear algebra for GPTQ and AWQ: a safe wrapper over the `gemm` crate, the Gram
//! matrix `XᵀX`, a blocked Cholesky factorization and a blocked inverse of a lower triangular
//! matrix, all row-major.
//!
//! GPTQ needs `U`, the upper Cholesky factor of `H⁻¹` (`H⁻¹ = UᵀU`). The reference computes it
//! in three steps (Cholesky of `H`, `cholesky_inverse`, Cholesky of the inverse: about `n³`
//! flops). [`upper_cholesky_of_inverse`] gets the same matrix in two (`2n³/3`): with `J` the
//! reversal permutation, factor `JHJ = L Lᵀ`; then `H = (JLJ)(JLJ)ᵀ` with `JLJ` upper, so
//! `H⁻¹ = UᵀU` with `U = (JLJ)⁻¹ = J L⁻¹ J`, upper with a positive diagonal, hence the unique
//! factor. The tests check it against the literal three steps.
//!
//! Work splits never depend on the thread count (rayon over fixed blocks, each `gemm` call on
//! one thread), so results are bit-identical on 1 or N threads.

use crate::{Error, Result};
use gemm::Parallelism;
use rayon::prelude::*;

/// The block size of the factorizations (a multiple of the gemm micro-kernel's tiles).
const NB: usize = 64;

/// An element type `gemm` supports.
pub(crate) trait Real: Copy + Send + Sync + std::ops::Mul<Output = Self> + 'static {
    const ZERO: Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
}

#[inline]
fn scale<T: Real>(c: T, v: T) -> T {
    c * v
}

/// A read-only strided matrix: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A `(rows, cols)` matrix with row stride `rs` (contiguous rows).
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The `(rows, cols)` block starting at `(r0, c0)`.
    pub fn sub(self, r0: usize, c0: usize, rows: usize, cols: usize) -> Self {
        let off = if rows == 0 || cols == 0 {
            0
        } else {
            r0 * self.rs + c0 * self.cs
        };
        Mat {
            data: &self.data[off..],
            rows,
            cols,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// A mutable `(rows, cols)` matrix with contiguous rows of stride `rs`.
pub(crate) struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
}

/// `dst = keep · dst + alpha · a · b`, or `dst = alpha · a · b` when `keep` is `None`.
/// `threads`: let gemm use the rayon pool (its split is over output tiles, never over `k`).
pub(crate) fn gemm<T: Real>(
    dst: MatMut<'_, T>,
    keep: Option<T>,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    alpha: T,
    threads: bool,
) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm: shapes ({m}, {n}) = ({}, {}) · ({}, {})",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst.rs + n <= dst.data.len() && a.in_bounds() && b.in_bounds(),
        "gemm: a view is out of its buffer"
    );
    if k == 0 {
        // gemm is not asked to handle an empty product: dst = keep · dst (or 0).
        for i in 0..m {
            for v in &mut dst.data[i * dst.rs..i * dst.rs + n] {
                *v = keep.map_or(T::ZERO, |c| scale(c, *v));
            }
        }
        return;
    }
    let par = if threads && m * n * k >= 1 << 18 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above prove that every element gemm reads (`a`, `b`) or writes
    // (`dst`: m rows of n contiguous values at stride rs) lies inside the borrowed slices, and
    // `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.rs as isize,
            keep.is_some(),
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            keep.unwrap_or(T::ZERO),
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// `g = keep · g + alpha · XᵀX` for `x` of `(n_rows, n)` row-major; `g` is `(n, n)` and stays
/// symmetric. Only the lower block triangle is multiplied (then mirrored), which halves the
/// work; rayon runs over fixed row blocks of `g`.
pub(crate) fn gram_update(
    g: &mut [f64],
    n: usize,
    x: &[f64],
    n_rows: usize,
    keep: f64,
    alpha: f64,
) {
    assert!(
        g.len() == n * n && x.len() == n_rows * n,
        "gram_update: sizes"
    );
    const ROWS: usize = 128;
    let xm = Mat::new(x, n_rows, n, n);
    g.par_chunks_mut(ROWS * n)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let r0 = bi * ROWS;
            let nr = chunk.len() / n;
            let r1 = r0 + nr;
            let dst = MatMut {
                data: chunk,
                rows: nr,
                cols: r1,
                rs: n,
            };
            let keep = (keep != 0.0).then_some(keep);
            // (nr, r1) = Xᵀ[r0..r1, :] · X[:, 0..r1]
            gemm(
                dst,
                keep,
                xm.t().sub(r0, 0, nr, n_rows),
                xm.sub(0, 0, n_rows, r1),
                alpha,
                false,
            );
        });
    mirror_lower(g, n);
}

/// Copies the strictly lower triangle onto the upper one.
fn mirror_lower(a: &mut [f64], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = a[j * n + i];
        }
    }
}

/// In-place lower Cholesky factor of the symmetric positive definite `(n, n)` matrix `a`
/// (`a = L Lᵀ`; the upper triangle is zeroed). Right-looking and blocked: factor a diagonal
/// block, solve the panel under it, update the trailing lower triangle with gemm.
pub(crate) fn cholesky(a: &mut [f64], n: usize) -> Result<()> {
    assert!(a.len() == n * n, "cholesky: size");
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let (top, bottom) = a.split_at_mut(k1 * n);
        factor_diagonal_block(top, n, k0, k1)?;
        let top = &*top;
        // Panel: rows k1.. of columns k0..k1 solve X · L_kkᵀ = A (forward substitution by row).
        bottom.par_chunks_mut(n).for_each(|row| {
            for j in k0..k1 {
                let lj = &top[j * n + k0..j * n + j];
                let s = row[j] - dot(&row[k0..j], lj);
                row[j] = s / top[j * n + j];
            }
        });
        if k1 < n {
            trailing_update(bottom, n, k0, k1);
        }
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// Unblocked Cholesky of the diagonal block `k0..k1` (earlier blocks' updates already applied).
fn factor_diagonal_block(a: &mut [f64], n: usize, k0: usize, k1: usize) -> Result<()> {
    for j in k0..k1 {
        let d = a[j * n + j] - dot(&a[j * n + k0..j * n + j], &a[j * n + k0..j * n + j]);
        if d.is_nan() || d <= 0.0 {
            return Err(Error::Invalid(format!(
                "matrix is not positive definite (pivot {j} is {d})"
            )));
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..k1 {
            let (lo, hi) = a.split_at_mut(i * n);
            let s = hi[j] - dot(&hi[k0..j], &lo[j * n + k0..j * n + j]);
            hi[j] = s / d;
        }
    }
    Ok(())
}

/// `A[k1.., k1..] -= P Pᵀ` on the lower block triangle, `P = A[k1.., k0..k1]` (`bottom` holds
/// rows `k1..`).
fn trailing_update(bottom: &mut [f64], n: usize, k0: usize, k1: usize) {
    const ROWS: usize = 128;
    let m = bottom.len() / n;
    let kb = k1 - k0;
    let mut p = vec![0.0; m * kb];
    for (i, pr) in p.chunks_exact_mut(kb).enumerate() {
        pr.copy_from_slice(&bottom[i * n + k0..i * n + k1]);
    }
    let pm = Mat::new(&p, m, kb, kb);
    bottom
        .par_chunks_mut(ROWS * n)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let r0 = bi * ROWS;
            let nr = chunk.len() / n;
            let dst = MatMut {
                data: &mut chunk[k1..],
                rows: nr,
                cols: r0 + nr,
                rs: n,
            };
            gemm(
                dst,
                Some(1.0),
                pm.sub(r0, 0, nr, kb),
                pm.sub(0, 0, r0 + nr, kb).t(),
                -1.0,
                false,
            );
        });
}

/// The inverse of the lower triangular `(n, n)` matrix `l` (row-major, lower). Column blocks
/// of the inverse are independent (`L X = I` block-column by block-column), so rayon runs over
/// them; inside one, each block row is `X_ij = -L_ii⁻¹ · (L[i, j..i] · X[j..i, j])`.
pub(crate) fn inverse_lower(l: &[f64], n: usize) -> Vec<f64> {
    assert!(l.len() == n * n, "inverse_lower: size");
    let starts: Vec<usize> = (0..n).step_by(NB).collect();
    let diag_inv: Vec<Vec<f64>> = starts
        .par_iter()
        .map(|&k0| invert_small_lower(l, n, k0, (k0 + NB).min(n)))
        .collect();
    let lm = Mat::new(l, n, n, n);
    let columns: Vec<Vec<f64>> = starts
        .par_iter()
        .enumerate()
        .map(|(jb, &j0)| {
            let bj = (j0 + NB).min(n) - j0;
            // c = X[j0.., j0..j0 + bj], (n - j0, bj) row-major.
            let mut c = vec![0.0; (n - j0) * bj];
            c[..bj * bj].copy_from_slice(&diag_inv[jb]);
            let mut t = vec![0.0; NB * bj];
            for (ib, &i0) in starts.iter().enumerate().skip(jb + 1) {
                let bi = (i0 + NB).min(n) - i0;
                let (done, rest) = c.split_at_mut((i0 - j0) * bj);
                let t = &mut t[..bi * bj];
                // t = L[i0..i1, j0..i0] · X[j0..i0, jb]
                gemm(
                    MatMut {
                        data: t,
                        rows: bi,
                        cols: bj,
                        rs: bj,
                    },
                    None,
                    lm.sub(i0, j0, bi, i0 - j0),
                    Mat::new(done, i0 - j0, bj, bj),
                    1.0,
                    false,
                );
                // X[i0..i1, jb] = -L_ii⁻¹ · t
                gemm(
                    MatMut {
                        data: &mut rest[..bi * bj],
                        rows: bi,
                        cols: bj,
                        rs: bj,
                    },
                    None,
                    Mat::new(&diag_inv[ib], bi, bi, bi),
                    Mat::new(t, bi, bj, bj),
                    -1.0,
                    false,
                );
            }
            c
        })
        .collect();
    let mut x = vec![0.0; n * n];
    for (c, &j0) in columns.iter().zip(&starts) {
        let bj = (j0 + NB).min(n) - j0;
        for (i, cr) in c.chunks_exact(bj).enumerate() {
            x[(j0 + i) * n + j0..(j0 + i) * n + j0 + bj].copy_from_slice(cr);
        }
    }
    x
}

/// The inverse of the diagonal block `k0..k1` of the lower triangular `l`, `(k1-k0)²` row-major.
fn invert_small_lower(l: &[f64], n: usize, k0: usize, k1: usize) -> Vec<f64> {
    let b = k1 - k0;
    let at = |i: usize, j: usize| l[(k0 + i) * n + k0 + j];
    let mut x = vec![0.0; b * b];
    for j in 0..b {
        x[j * b + j] = 1.0 / at(j, j);
        for i in j + 1..b {
            let s: f64 = (j..i).map(|p| at(i, p) * x[p * b + j]).sum();
            x[i * b + j] = -s / at(i, i);
        }
    }
    x
}

/// `U`, upper triangular with `H⁻¹ = UᵀU`, for the symmetric positive definite `(n, n)` `h`
/// (module doc for the two-step route).
pub(crate) fn upper_cholesky_of_inverse(h: &[f64], n: usize) -> Result<Vec<f64>> {
    assert!(h.len() == n * n, "upper_cholesky_of_inverse: size");
    let rev = |i: usize| n - 1 - i;
    // JHJ
    let mut a: Vec<f64> = (0..n * n).map(|k| h[rev(k / n) * n + rev(k % n)]).collect();
    cholesky(&mut a, n)?;
    let x = inverse_lower(&a, n);
    Ok((0..n * n).map(|k| x[rev(k / n) * n + rev(k % n)]).collect())
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-conditioned SPD matrix: `BᵀB/m + I` for a pseudo-random `B`.
    fn spd(n: usize) -> Vec<f64> {
        let m = n + 7;
        let mut s = 12345u64;
        let b: Vec<f64> = (0..m * n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let mut g = vec![0.0; n * n];
        gram_update(&mut g, n, &b, m, 0.0, 1.0 / m as f64);
        for i in 0..n {
            g[i * n + i] += 1.0;
        }
        g
    }

    fn naive_cholesky(a: &[f64], n: usize) -> Vec<f64> {
        let mut l = vec![0.0; n * n];
        for j in 0..n {
            let d: f64 = a[j * n + j] - (0..j).map(|p| l[j * n + p] * l[j * n + p]).sum::<f64>();
            l[j * n + j] = d.sqrt();
            for i in j + 1..n {
                let s: f64 =
                    a[i * n + j] - (0..j).map(|p| l[i * n + p] * l[j * n + p]).sum::<f64>();
                l[i * n + j] = s / l[j * n + j];
            }
        }
        l
    }

    fn naive_matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn blocked_cholesky_and_inverse_match_naive() {
        for n in [1, 5, 64, 65, 200] {
            let a = spd(n);
            let mut l = a.clone();
            cholesky(&mut l, n).unwrap();
            let d = max_diff(&l, &naive_cholesky(&a, n));
            assert!(d < 1e-12, "n {n}: cholesky off by {d}");
            let x = inverse_lower(&l, n);
            let eye = naive_matmul(&l, &x, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    let got = eye[i * n + j];
                    assert!(
                        (got - want).abs() < 1e-12,
                        "n {n}: (L·L⁻¹)[{i},{j}] = {got}"
                    );
                }
            }
        }
    }

    #[test]
    fn two_step_route_matches_the_reference_three_steps() {
        for n in [3, 64, 130] {
            let h = spd(n);
            let u = upper_cholesky_of_inverse(&h, n).unwrap();
            // The reference: L = chol(H); H⁻¹ = L⁻ᵀL⁻¹; U = chol(H⁻¹)ᵀ.
            let l = naive_cholesky(&h, n);
            let li = inverse_lower(&l, n);
            let hinv = naive_matmul(&transpose(&li, n), &li, n);
            let want = transpose(&naive_cholesky(&hinv, n), n);
            let d = max_diff(&u, &want);
            assert!(d < 1e-12, "n {n}: off by {d}");
        }
    }

    #[test]
    fn not_positive_definite_is_an_error() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky(&mut a, 2).is_err());
    }
}
