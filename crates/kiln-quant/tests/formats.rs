//! Block formats: type table, bit-exact reference quantizers, round-trip error, bad sizes.

use half::f16;
use kiln_quant::{act, dequantize, quantize, Error, GgmlType, QMatrix, SharedBytes};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    // Sum of uniforms: close enough to a normal for quantization error bounds.
    (0..n)
        .map(|_| (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.87)
        .collect()
}

#[test]
fn type_table() {
    for (id, ty, bs, ts) in [
        (0, GgmlType::F32, 1, 4),
        (1, GgmlType::F16, 1, 2),
        (2, GgmlType::Q4_0, 32, 18),
        (3, GgmlType::Q4_1, 32, 20),
        (6, GgmlType::Q5_0, 32, 22),
        (7, GgmlType::Q5_1, 32, 24),
        (8, GgmlType::Q8_0, 32, 34),
        (12, GgmlType::Q4_K, 256, 144),
        (14, GgmlType::Q6_K, 256, 210),
        (15, GgmlType::Q8_K, 256, 292),
        (30, GgmlType::BF16, 1, 2),
    ] {
        let t = GgmlType::from_u32(id).unwrap();
        assert_eq!(t, ty);
        assert_eq!(t.id(), id);
        assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
    }
    assert_eq!(GgmlType::Q4_K.name(), "q4_K");
    for bad in [4, 5, 31, 32, 33, 36, 1000] {
        assert!(matches!(GgmlType::from_u32(bad), Err(Error::UnknownType(b)) if b == bad));
    }
    assert_eq!(GgmlType::Q4_1.row_bytes(576).unwrap(), 18 * 20);
    assert_eq!(GgmlType::Q6_K.row_bytes(512).unwrap(), 2 * 210);
    assert!(matches!(
        GgmlType::Q4_K.row_bytes(576),
        Err(Error::NotBlockMultiple { .. })
    ));
    assert!(matches!(
        GgmlType::Q8_0.row_bytes(33),
        Err(Error::NotBlockMultiple { .. })
    ));
}

#[test]
fn unsupported_types_are_errors() {
    let bytes = vec![0u8; GgmlType::Q5_K.row_bytes(256).unwrap()];
    let e = QMatrix::new(GgmlType::Q5_K, 1, 256, SharedBytes::from_vec(bytes.clone())).unwrap_err();
    assert!(matches!(
        e,
        Error::Unsupported {
            ty: GgmlType::Q5_K,
            ..
        }
    ));
    assert!(e.to_string().contains("q5_K"), "{e}");
    assert!(quantize(GgmlType::IQ2_XXS, &[0.0; 256]).is_err());
    let mut out = vec![0f32; 256];
    assert!(dequantize(GgmlType::Q5_K, &bytes, &mut out).is_err());
}

#[test]
fn bad_sizes_are_errors() {
    let w = randn(4 * 64, 1);
    assert!(matches!(
        QMatrix::quantize(GgmlType::Q8_0, 4, 64, &w[..100]),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(QMatrix::quantize(GgmlType::Q8_0, 8, 32, &w[..256]).is_ok());
    assert!(QMatrix::quantize(GgmlType::Q8_0, 2, 128, &w[..256]).is_ok());
    assert!(QMatrix::quantize(GgmlType::Q4_K, 1, 256, &w[..256]).is_ok());
    assert!(matches!(
        QMatrix::quantize(GgmlType::Q4_0, 16, 16, &w[..256]),
        Err(Error::NotBlockMultiple { .. })
    ));
    let bytes = quantize(GgmlType::Q4_1, &w).unwrap();
    assert!(matches!(
        QMatrix::new(GgmlType::Q4_1, 5, 64, SharedBytes::from_vec(bytes.clone())),
        Err(Error::SizeMismatch { .. })
    ));
    let owner = std::sync::Arc::new(bytes.clone());
    assert!(SharedBytes::new(owner.clone(), 10, bytes.len()).is_err());
    let m = QMatrix::new(
        GgmlType::Q4_1,
        4,
        64,
        SharedBytes::new(owner, 0, bytes.len()).unwrap(),
    )
    .unwrap();
    let mut out = vec![0f32; 8];
    assert!(m.matmul(&w[..128], 2, &mut out).is_ok());
    assert!(matches!(
        m.matmul(&w[..127], 2, &mut out),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(matches!(
        m.matmul(&w[..128], 2, &mut out[..7]),
        Err(Error::SizeMismatch { .. })
    ));
    let mut row = vec![0f32; 64];
    assert!(matches!(
        m.dequantize_row(4, &mut row),
        Err(Error::RowOutOfRange { .. })
    ));
    assert!(matches!(
        m.dequantize_row(0, &mut row[..63]),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(m.matmul(&[], 0, &mut []).is_ok());
}

fn le16(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[test]
fn q8_0_known_block() {
    // amax = 127 → d = 1 exactly; values are their own quants.
    let mut x = [0f32; 32];
    for (j, v) in x.iter_mut().enumerate() {
        *v = j as f32 * 8.0 - 127.0; // -127, -119, ..., 121
    }
    let b = kiln_quant::q8_0::quantize_block(&x);
    assert_eq!(b[..2], [0x00, 0x3C]);
    for j in 0..32 {
        assert_eq!(b[2 + j] as i8, (j as i32 * 8 - 127) as i8);
    }
    // amax = 63.5 → d = 0.5, id = 2: ±0.25 → ±0.5 rounds away from zero to ±1 (C roundf).
    let mut x = [0f32; 32];
    x[0] = 63.5;
    x[1] = 0.25;
    x[2] = -0.25;
    x[3] = 0.74;
    x[4] = -10.0;
    let b = kiln_quant::q8_0::quantize_block(&x);
    assert_eq!(b[..2], [0x00, 0x38]);
    assert_eq!(
        b[2..7].iter().map(|&q| q as i8).collect::<Vec<_>>(),
        [127, 1, -1, 1, -20]
    );
    assert!(b[7..].iter().all(|&q| q == 0));
}

#[test]
fn q4_0_known_block() {
    // Largest magnitude is -8 (first) → d = -8 / -8 = 1; q = x + 8.
    let x: [f32; 32] = std::array::from_fn(|j| (j % 16) as f32 - 8.0);
    let b = kiln_quant::q4_0::quantize_block(&x);
    assert_eq!(b[..2], [0x00, 0x3C]);
    for j in 0..16 {
        assert_eq!(b[2 + j], (j as u8) | ((j as u8) << 4));
    }
    // Largest magnitude +4 → d = -0.5 (f16 0xB800); q = min(15, trunc(x / -0.5 + 8.5)).
    let mut x = [0f32; 32];
    x[0] = 4.0; // -8 + 8.5 = 0.5 → 0
    x[1] = -3.9; // 7.8 + 8.5 = 16.3 → 16 → clamped 15
    x[2] = 0.3; // -0.6 + 8.5 = 7.9 → 7
    x[16] = -0.26; // 0.52 + 8.5 = 9.02 → 9
    let b = kiln_quant::q4_0::quantize_block(&x);
    assert_eq!(b[..2], [0x00, 0xB8]);
    assert_eq!(b[2], 9 << 4);
    assert_eq!(b[3], 15 | (8 << 4));
    assert_eq!(b[4], 7 | (8 << 4));
    assert_eq!(b[5], 8 | (8 << 4));
}

#[test]
fn q4_1_known_block() {
    // min -8, max 7 → d = 1, m = -8; q = trunc(x + 8 + 0.5).
    let x: [f32; 32] = std::array::from_fn(|j| (j % 16) as f32 - 8.0);
    let b = kiln_quant::q4_1::quantize_block(&x);
    assert_eq!(b[..4], [0x00, 0x3C, 0x00, 0xC8]);
    for j in 0..16 {
        assert_eq!(b[4 + j], (j as u8) * 0x11);
    }
    // min 1, max 4 → d = 0.2, m = 1: (x - 1) * 5 + 0.5 truncated.
    let mut x = [1f32; 32];
    x[0] = 4.0; // 15.5 → 15
    x[1] = 1.29; // 1.45 + 0.5 → 1
    x[17] = 1.31; // 1.55 + 0.5 → 2
    let b = kiln_quant::q4_1::quantize_block(&x);
    assert_eq!(b[..2], le16(3.0 / 15.0));
    assert_eq!(b[2..4], le16(1.0));
    assert_eq!(b[4], 15);
    assert_eq!(b[5], 1 | (2 << 4));
    assert!(b[6..].iter().all(|&q| q == 0));
}

/// rms(dequantize(quantize(x)) - x) / rms(x).
/// Q5_0 and Q5_1 against the `gguf` Python package's numpy quantizers (ggml's reference
/// algorithm), two blocks each of the values below:
/// `gguf.quants.quantize(x.reshape(1, 64), GGMLQuantizationType.Q5_0).tobytes().hex()`.
#[test]
fn q5_blocks_match_the_gguf_package() {
    // Python computes in f64, then numpy rounds to f32.
    let x: Vec<f32> = (0..64i64)
        .map(|i| {
            let v = ((i * 37) % 101 - 50) as f64 / 23.0 + if i % 7 == 0 { 0.5 } else { 0.0 };
            v as f32
        })
        .collect();
    for (ty, hex) in [
        (
            GgmlType::Q5_0,
            "59b05bdad2924c94d81d5165ea2a62b6fb3f43c7084000b196b6b4a4da0b51b4d92e84a6cc5d70d92b40a688",
        ),
        (
            GgmlType::Q5_1,
            "5a3016c0a4252d6db36b27e2ae9a15d59d4904c0bc38f7bfbc302dc069494b5b15f29d4b15c07b4823a07e26d3ae5956",
        ),
    ] {
        let want: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let got = quantize(ty, &x).unwrap();
        assert_eq!(got, want, "{ty}");
        let mut y = vec![0f32; 64];
        dequantize(ty, &got, &mut y).unwrap();
        let err = x.iter().zip(&y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let range = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(err <= range / 15.0, "{ty}: max error {err}");
    }
}

fn round_trip_error(ty: GgmlType, x: &[f32]) -> f32 {
    let q = quantize(ty, x).unwrap();
    assert_eq!(q.len(), ty.row_bytes(x.len()).unwrap());
    let mut y = vec![0f32; x.len()];
    dequantize(ty, &q, &mut y).unwrap();
    let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm: f32 = x.iter().map(|a| a * a).sum();
    (err / norm).sqrt()
}

#[test]
fn round_trip_within_format_error() {
    let x = randn(256 * 64, 7);
    for (ty, bound) in [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q4_0, 0.13),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q5_0, 0.065),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q4_K, 0.15),
        (GgmlType::Q6_K, 0.04),
    ] {
        let e = round_trip_error(ty, &x);
        assert!(e <= bound, "{ty}: relative rms error {e} > {bound}");
        eprintln!("{ty}: relative rms error {e:.5}");
    }
    // Zeros stay zeros (d = 0 must not produce NaN).
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let q = quantize(ty, &[0.0; 256]).unwrap();
        let mut y = vec![1f32; 256];
        dequantize(ty, &q, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty}");
    }
}

#[test]
fn simd_activation_quantizer_is_bit_identical() {
    let mut x = randn(32 * 40, 3);
    // Exact ties: amax 63.5 → id 2, so k/4 values land on .5 after scaling.
    for (j, v) in x[..32].iter_mut().enumerate() {
        *v = if j == 0 {
            63.5
        } else {
            (j as f32 - 16.0) * 0.25
        };
    }
    x[32..64].fill(0.0);
    let mut fast = vec![act::BlockQ8::default(); 40];
    act::quantize_row_q8(&x, &mut fast);
    for (b, c) in fast.iter().zip(x.chunks_exact(32)) {
        let r = act::quantize_q8(c.try_into().unwrap());
        assert_eq!(b.qs, r.qs);
        assert_eq!(b.d.to_bits(), r.d.to_bits());
        assert_eq!(b.s.to_bits(), r.s.to_bits());
    }
}

#[test]
fn dequantize_row_matches_whole_matrix() {
    let w = randn(7 * 512, 11);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        let m = QMatrix::quantize(ty, 7, 512, &w).unwrap();
        let all = m.dequantize().unwrap();
        let mut row = vec![0f32; 512];
        for i in 0..7 {
            m.dequantize_row(i, &mut row).unwrap();
            assert_eq!(row, all[i * 512..(i + 1) * 512], "{ty} row {i}");
        }
    }
}
