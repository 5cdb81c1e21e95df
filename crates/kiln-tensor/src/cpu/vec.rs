//! Small vector primitives written so LLVM vectorises them: float reductions are split over
//! eight independent accumulators (a single accumulator is a serial dependency chain that the
//! compiler may not reorder without fast-math).

/// `sum_i a[i] * b[i]`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}

/// `y[i] += a * x[i]`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `sum_i x[i]^2`.
#[inline]
pub fn sum_squares(x: &[f32]) -> f32 {
    dot(x, x)
}
