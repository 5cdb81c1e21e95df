//! `QMatrix::matmul`: against an f32 matmul of the dequantized weights, and every SIMD kernel
//! against the scalar reference, over token counts and row counts that exercise every tile edge.

use kiln_quant::{GgmlType, Isa, QMatrix};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.87)
        .collect()
}

/// out = x · Wᵀ in f64 over the dequantized weights.
fn reference(m: &QMatrix, x: &[f32], n_tokens: usize) -> Vec<f32> {
    let w = m.dequantize().unwrap();
    let (rows, cols) = (m.rows(), m.cols());
    let mut out = vec![0f32; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|k| x[t * cols + k] as f64 * w[r * cols + k] as f64)
                .sum();
            out[t * rows + r] = s as f32;
        }
    }
    out
}

fn rel_rms(a: &[f32], b: &[f32]) -> f32 {
    let err: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f32 = b.iter().map(|y| y * y).sum();
    (err / norm.max(1e-30)).sqrt()
}

const TYPES: [GgmlType; 10] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
];

fn cols_for(ty: GgmlType) -> &'static [usize] {
    if ty.block_size() == 256 {
        &[256, 768]
    } else {
        &[32, 96, 576]
    }
}

#[test]
fn matmul_matches_f32_reference() {
    for ty in TYPES {
        for &cols in cols_for(ty) {
            for (rows, n_tokens) in [(1, 1), (5, 3), (67, 17), (130, 1), (36, 8)] {
                let w = randn(rows * cols, (rows * cols) as u64);
                let x = randn(n_tokens * cols, 99 + n_tokens as u64);
                let m = QMatrix::quantize(ty, rows, cols, &w).unwrap();
                let mut out = vec![f32::NAN; n_tokens * rows];
                m.matmul(&x, n_tokens, &mut out).unwrap();
                let want = reference(&m, &x, n_tokens);
                let e = rel_rms(&out, &want);
                // Activations are quantized to 8 bits for the quantized types: per element an
                // error below 1% of |x|, so by Cauchy-Schwarz each output is within
                // 1% of |x_t|·|w_r|.
                let bound = if ty.block_size() == 1 { 1e-5 } else { 0.01 };
                let wd = m.dequantize().unwrap();
                let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let scale = norm(&x[t * cols..(t + 1) * cols])
                            * norm(&wd[r * cols..(r + 1) * cols]);
                        let (g, w) = (out[t * rows + r], want[t * rows + r]);
                        assert!(
                            (g - w).abs() <= bound * scale,
                            "{ty} {rows}x{cols} n_tokens={n_tokens}: {g} vs {w}"
                        );
                    }
                }
                if rows * n_tokens > 100 {
                    assert!(
                        e < 0.02,
                        "{ty} {rows}x{cols} n_tokens={n_tokens}: rel rms {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn simd_kernels_match_scalar() {
    let isas = Isa::available();
    eprintln!("instruction sets: {isas:?}");
    for ty in TYPES {
        for &cols in cols_for(ty) {
            for rows in [1, 3, 4, 7, 16, 67, 130] {
                for n_tokens in [1, 3, 4, 5, 17] {
                    let w = randn(rows * cols, 5 + rows as u64);
                    let x = randn(n_tokens * cols, 17 + n_tokens as u64);
                    let m = QMatrix::quantize(ty, rows, cols, &w).unwrap();
                    let mut want = vec![0f32; n_tokens * rows];
                    m.matmul_isa(Isa::Scalar, &x, n_tokens, &mut want).unwrap();
                    let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                    for &isa in &isas[1..] {
                        let mut got = vec![f32::NAN; n_tokens * rows];
                        m.matmul_isa(isa, &x, n_tokens, &mut got).unwrap();
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= 2e-5 * scale,
                                "{ty} {isa:?} {rows}x{cols} n_tokens={n_tokens} at {i}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_chunking_covers_every_row() {
    // Large enough to be split into rayon chunks, with row counts that are not multiples of the
    // chunk or the 4-row tile, on pools of several sizes.
    for threads in [1, 2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K] {
            let cols = if ty == GgmlType::Q4_K { 512 } else { 576 };
            for (rows, n_tokens) in [(1001, 1), (203, 17), (70, 3)] {
                let w = randn(rows * cols, rows as u64);
                let x = randn(n_tokens * cols, 3);
                let m = QMatrix::quantize(ty, rows, cols, &w).unwrap();
                let mut want = vec![0f32; n_tokens * rows];
                m.matmul_isa(Isa::Scalar, &x, n_tokens, &mut want).unwrap();
                let mut got = vec![f32::NAN; n_tokens * rows];
                pool.install(|| m.matmul(&x, n_tokens, &mut got)).unwrap();
                let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 2e-5 * scale,
                        "{ty} {rows} rows, {threads} threads: {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// Batch invariance: a token's outputs are bit-identical whether it is multiplied alone or
/// together with other tokens (register tiles of 4 tokens, prefill chunking), so the serving
/// engine's packed steps give each sequence exactly what it would get alone.
#[test]
fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::F32,
        GgmlType::F16,
    ] {
        let (rows, cols) = (72, 576);
        let w = randn(rows * cols, 11);
        let m = QMatrix::quantize(ty, rows, cols, &w).unwrap();
        for &isa in &Isa::available() {
            for n_tokens in [2, 4, 5, 9] {
                let x = randn(n_tokens * cols, 23 + n_tokens as u64);
                let mut all = vec![0f32; n_tokens * rows];
                m.matmul_isa(isa, &x, n_tokens, &mut all).unwrap();
                for t in 0..n_tokens {
                    let mut one = vec![0f32; rows];
                    m.matmul_isa(isa, &x[t * cols..(t + 1) * cols], 1, &mut one)
                        .unwrap();
                    assert_eq!(
                        one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        all[t * rows..(t + 1) * rows]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        "{ty} {isa:?}: token {t} of {n_tokens}"
                    );
                }
            }
        }
    }
}

/// `matmul_many` (one activation quantization, one parallel region) gives exactly what one
/// `matmul` per matrix gives, for mixed packed formats, the fallback (a K-quant among them),
/// and mismatched argument counts are an error.
#[test]
fn matmul_many_equals_separate_calls() {
    let cols = 256;
    let specs = [
        (GgmlType::Q4_1, 576),
        (GgmlType::Q8_0, 192),
        (GgmlType::Q4_0, 67),
        (GgmlType::Q4_K, 40),
    ];
    let mats: Vec<QMatrix> = specs
        .iter()
        .enumerate()
        .map(|(i, &(ty, rows))| {
            QMatrix::quantize(ty, rows, cols, &randn(rows * cols, 90 + i as u64)).unwrap()
        })
        .collect();
    for n_tokens in [1, 4, 7] {
        let x = randn(n_tokens * cols, 7 + n_tokens as u64);
        for set in [&mats[..3], &mats[..], &mats[1..2]] {
            let refs: Vec<&QMatrix> = set.iter().collect();
            let mut outs: Vec<Vec<f32>> = set
                .iter()
                .map(|m| vec![f32::NAN; n_tokens * m.rows()])
                .collect();
            let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            QMatrix::matmul_many(&refs, &x, n_tokens, &mut slices).unwrap();
            for (m, got) in set.iter().zip(&outs) {
                let mut want = vec![0f32; n_tokens * m.rows()];
                m.matmul(&x, n_tokens, &mut want).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "{} n_tokens={n_tokens}", m.ty());
            }
        }
    }
    let mut one = vec![0f32; 576];
    assert!(
        QMatrix::matmul_many(&[&mats[0], &mats[1]], &randn(cols, 1), 1, &mut [&mut one]).is_err()
    );
    let mut short = vec![0f32; 5];
    assert!(QMatrix::matmul_many(
        &[&mats[0], &mats[1]],
        &randn(cols, 1),
        1,
        &mut [&mut one, &mut short]
    )
    .is_err());
}
