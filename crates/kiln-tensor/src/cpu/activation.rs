//! Scalar activation functions (applied elementwise by `elementwise::unary`).

/// `x · sigmoid(x)`, with [`exp`] below so that loops over it vectorise.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Cephes `expf`: ln2 split in two so that `n · LN2_HI` is exact, and the degree-6 polynomial of
/// `e^r` (highest degree first); shared by [`exp`] and the SIMD `exp256`/`exp512` of the decode
/// kernels.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` in straight-line f32 arithmetic (no libm call, no branch), so a loop of it
/// auto-vectorises (see `elementwise::gated_in_place`); within 2 ulp of the exact value on `[-87, 88]` (test below). Range
/// reduction `x = n ln2 + r`, `|r| <= ln2/2`, with ln2 split in two for exactness, a degree-6
/// polynomial for `e^r` (Cephes `expf` coefficients), and `2^n` built in the exponent bits.
/// Inputs are clamped to `[-87.3, 88.3]`: below, the result is ~1e-38 instead of a denormal or 0;
/// above, ~2e38 instead of infinity (callers here divide by `1 + e^x`, where either is fine).
/// NaN is clamped like a very negative input (`silu` still returns NaN for it: `x` is a factor).
#[inline]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    // Not `clamp`: its NaN propagation costs the vectorised loop extra blends.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.3).min(88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let er = (p * r * r + r) + 1.0;
    // `n` is the low bits of `t`'s mantissa; no float-to-int conversion, which vectorises worse.
    er * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

/// GELU with the exact erf, as `torch.nn.functional.gelu(approximate="none")`.
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// erf(x) in f32 as a rational function on [-4, 4] (erf is ±1 in f32 beyond): Eigen's/XLA's
/// `generic_fast_erf_float`, absolute error below 1e-6, branch-free so GELU loops vectorise.
/// kiln's one erf: every exact-GELU model (BERT, BART, Marian) goes through it.
#[inline]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_5e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
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
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            // In units of the spacing of f32 around the exact value.
            let ulp = (want as f32).to_bits();
            let spacing = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
            worst = worst.max((got - want).abs() / spacing);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(silu(f32::NAN).is_nan());
        assert!(silu(-200.0).abs() < 1e-30 && silu(200.0) == 200.0);
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
