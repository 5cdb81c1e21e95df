//! Fast CPU kernels against their plain references, including strided and empty inputs.

use kiln_tensor::cpu::attention::{attention, reference_attention, AttnParams, RelativeBias};
use kiln_tensor::cpu::matmul::reference_matmul;
use kiln_tensor::cpu::rope::{apply_rope, RopeStyle};
use kiln_tensor::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn matmul_matches_reference_plain_and_transposed() {
    let mut rng = StdRng::seed_from_u64(1);
    for (m, k, n) in [(1, 7, 5), (17, 64, 33), (130, 96, 70), (3, 1, 4)] {
        let a = rand_vec(&mut rng, m * k);
        let b = rand_vec(&mut rng, k * n);
        let expect = reference_matmul(&a, &b, m, k, n);
        let ta = Tensor::from_vec(a.clone(), [m, k]).unwrap();
        let tb = Tensor::from_vec(b.clone(), [k, n]).unwrap();
        let got = ta.matmul(&tb).unwrap().to_vec_f32();
        assert!(max_rel_err(&got, &expect) < 1e-5, "{m}x{k}x{n}");
        // The same product with the right operand stored transposed (n, k), as nn.Linear does.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let tbt = Tensor::from_vec(bt, [n, k]).unwrap();
        let got = ta.matmul_t(&tbt).unwrap().to_vec_f32();
        assert!(max_rel_err(&got, &expect) < 1e-5);
        // f16 and bf16 operands are widened to f32.
        let got = ta
            .to_dtype(DType::F16)
            .unwrap()
            .matmul(&tb.to_dtype(DType::BF16).unwrap())
            .unwrap()
            .to_vec_f32();
        assert!(max_rel_err(&got, &expect) < 2e-2);
    }
}

#[test]
fn matmul_rejects_bad_shapes_and_handles_empty() {
    let a = Tensor::zeros([2, 3]);
    let b = Tensor::zeros([4, 5]);
    assert!(a.matmul(&b).is_err());
    let e = Tensor::zeros([0, 3])
        .matmul(&Tensor::zeros([3, 2]))
        .unwrap();
    assert_eq!(e.dims(), &[0, 2]);
    let z = Tensor::zeros([2, 0])
        .matmul(&Tensor::zeros([0, 2]))
        .unwrap();
    assert_eq!(z.to_vec_f32(), vec![0.0; 4]);
}

#[test]
fn views_narrow_transpose_reshape() {
    let t = Tensor::from_vec((0..24).map(|x| x as f32).collect(), [2, 3, 4]).unwrap();
    let n = t.narrow(2, 1, 2).unwrap();
    assert_eq!(n.dims(), &[2, 3, 2]);
    assert!(!n.is_contiguous());
    assert_eq!(n.to_vec_f32()[..4], [1.0, 2.0, 5.0, 6.0]);
    let tr = t.transpose(0, 2).unwrap();
    assert_eq!(tr.dims(), &[4, 3, 2]);
    assert_eq!(tr.to_vec_f32()[..3], [0.0, 12.0, 4.0]);
    let r = tr.reshape([4, 6]).unwrap();
    assert_eq!(r.to_vec_f32(), tr.contiguous().to_vec_f32());
    assert!(t.reshape([5, 5]).is_err());
    assert!(t.narrow(1, 2, 2).is_err());
    assert!(t.transpose(0, 3).is_err());
}

#[test]
fn norms_and_softmax() {
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0], [2, 4]).unwrap();
    let w = Tensor::from_vec(vec![1.0, 0.5, 2.0, 1.0], [4]).unwrap();
    let r = x.rms_norm(&w, 1e-6).unwrap().to_vec_f32();
    let inv = 1.0 / (7.5f32 + 1e-6).sqrt();
    assert!((r[2] - 3.0 * inv * 2.0).abs() < 1e-6);
    let l = x.layer_norm(&w, Some(&w), 1e-5).unwrap().to_vec_f32();
    let inv = 1.0 / (1.25f32 + 1e-5).sqrt();
    assert!((l[0] - (-1.5 * inv + 1.0)).abs() < 1e-5);
    let s = x.softmax_last().unwrap().to_vec_f32();
    assert!((s[..4].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(x.rms_norm(&Tensor::zeros([3]), 1e-6).is_err());
}

#[test]
fn elementwise_broadcasts_trailing_dims() {
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
    let b = Tensor::from_vec(vec![10.0, 20.0], [2]).unwrap();
    assert_eq!(
        x.add(&b).unwrap().to_vec_f32(),
        vec![11.0, 22.0, 13.0, 24.0]
    );
    assert_eq!(x.mul(&x).unwrap().to_vec_f32(), vec![1.0, 4.0, 9.0, 16.0]);
    assert!(x.add(&Tensor::zeros([3])).is_err());
    let g = x.gather_rows(&[1, 0, 1]).unwrap().to_vec_f32();
    assert_eq!(g, vec![3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    assert!(x.gather_rows(&[2]).is_err());
}

#[test]
fn rope_half_and_interleaved_rotate_pairs() {
    // One head of dim 4, inv_freq [1, 0.5], position 1.
    let inv = [1.0f32, 0.5];
    let mut x = vec![1.0, 0.0, 0.0, 1.0];
    apply_rope(&mut x, 1, 4, &[1], &inv, 1.0, RopeStyle::Half);
    // pairs (x0, x2) angle 1 and (x1, x3) angle 0.5
    assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
    assert!((x[1] + 0.5f32.sin()).abs() < 1e-6 && (x[3] - 0.5f32.cos()).abs() < 1e-6);
    let mut y = vec![1.0, 0.0, 0.0, 1.0];
    apply_rope(&mut y, 1, 4, &[1], &inv, 1.0, RopeStyle::Interleaved);
    assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6);
    assert!((y[2] + 0.5f32.sin()).abs() < 1e-6 && (y[3] - 0.5f32.cos()).abs() < 1e-6);
}

/// T5-style relative bias (per head, by key minus query position) on the decode and prefill
/// paths, causal and bidirectional, against the f64 definition.
#[test]
fn attention_relative_bias_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for &(n_q, n_kv, causal) in &[
        (1usize, 9usize, true),
        (3, 40, true),
        (1, 300, true),
        (70, 70, true),
        (66, 66, false),
        (4, 4, false),
    ] {
        let (nh, hd) = (4, 8);
        let q = rand_vec(&mut rng, n_q * nh * hd);
        let k = rand_vec(&mut rng, n_kv * nh * hd);
        let v = rand_vec(&mut rng, n_kv * nh * hd);
        let q_start = n_kv - n_q;
        // Distances j - p from -(n_kv - 1) to n_kv - 1 - q_start.
        let min_rel = -(n_kv as isize - 1);
        let n_rel = 2 * n_kv - 1 - q_start;
        let values = rand_vec(&mut rng, nh * n_rel);
        let p = AttnParams {
            n_heads: nh,
            n_kv_heads: nh,
            head_dim: hd,
            scale: 1.0,
            causal,
            window: None,
            alibi_slopes: None,
            rel_bias: Some(RelativeBias {
                values: &values,
                min_rel,
                n_rel,
            }),
        };
        let expect = reference_attention(&q, &k, &v, q_start, &p);
        let mut got = vec![0.0; q.len()];
        attention(&q, &k, &v, q_start, &p, &mut got);
        assert!(max_rel_err(&got, &expect) < 1e-5, "n_q {n_q} n_kv {n_kv}");
        // The bias must matter: without it the result differs.
        let plain = reference_attention(
            &q,
            &k,
            &v,
            q_start,
            &AttnParams {
                rel_bias: None,
                ..p
            },
        );
        assert!(max_rel_err(&plain, &expect) > 1e-3);
    }
}

#[test]
fn attention_paths_match_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    // Six slopes: the BLOOM-style 6-head cases below use them all (ALiBi with a head count
    // that is not a power of two), the 4-head cases the first four.
    let slopes = [0.5f32, 0.25, 0.125, 0.0625, 0.7, 0.35];
    for &(n_q, n_kv, nh, nkv, causal, window, alibi) in &[
        (1usize, 9usize, 4usize, 2usize, true, None, false),
        (3, 40, 4, 1, true, Some(8usize), false),
        (1, 300, 4, 2, true, None, false),
        (2, 400, 4, 1, true, Some(250), true),
        (70, 70, 4, 2, true, None, false),
        (130, 150, 4, 4, true, Some(17), false),
        (65, 65, 4, 2, false, None, false),
        (90, 90, 4, 4, true, None, true),
        (2, 2, 4, 4, false, None, true),
        // ALiBi, 6 heads: one-token decode over several key chunks, and a chunked prefill
        // (q_start 20) on the blocked path.
        (1, 300, 6, 6, true, None, true),
        (130, 150, 6, 6, true, None, true),
    ] {
        let hd = 16;
        let q = rand_vec(&mut rng, n_q * nh * hd);
        let k = rand_vec(&mut rng, n_kv * nkv * hd);
        let v = rand_vec(&mut rng, n_kv * nkv * hd);
        let p = AttnParams {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: 0.25,
            causal,
            window,
            alibi_slopes: alibi.then_some(&slopes[..]),
            rel_bias: None,
        };
        let q_start = n_kv - n_q;
        let expect = reference_attention(&q, &k, &v, q_start, &p);
        let mut got = vec![0.0; q.len()];
        attention(&q, &k, &v, q_start, &p, &mut got);
        assert!(
            max_rel_err(&got, &expect) < 1e-5,
            "n_q {n_q} n_kv {n_kv} window {window:?}"
        );
    }
}

/// Block-format tensors: quantizing is kiln-quant's quantizer, dequantizing its decoder; the
/// quantized matmul equals a dense matmul on the dequantized weight up to the 8-bit activation
/// rounding of the integer kernels; several weights at once equal each alone (bit for bit);
/// lookups decode exact rows; views and dense-only ops are clear errors.
#[test]
fn quantized_tensors_matmul_gather_and_refuse_views() {
    use kiln_tensor::{Op, QuantType};
    let mut rng = StdRng::seed_from_u64(7);
    for q in QuantType::ALL {
        let dt = DType::Quant(q);
        let (rows, cols) = (19, 2 * q.block_size());
        let w = rand_vec(&mut rng, rows * cols);
        let wt = Tensor::from_vec(w.clone(), [rows, cols]).unwrap();
        let wq = wt.to_dtype(dt).unwrap();
        assert_eq!(wq.dtype(), dt);
        assert_eq!(wq.dims(), [rows, cols]);
        assert!(wq.supports(Op::QMatmul) && wq.supports(Op::Gather));
        assert!(!wq.supports(Op::Softmax));
        // The decoder is kiln-quant's.
        let bytes = kiln_quant::quantize(q.ggml(), &w).unwrap();
        let mut want = vec![0f32; w.len()];
        kiln_quant::dequantize(q.ggml(), &bytes, &mut want).unwrap();
        let deq = wq.to_dtype(DType::F32).unwrap();
        assert_eq!(deq.to_vec_f32(), want, "{dt} dequantize");
        assert!(
            max_rel_err(&want, &w) < 0.2,
            "{dt}: a 4-bit round trip stays close"
        );
        // matmul_t through the integer kernels vs the dense product with the same weights.
        for n in [1, 5, 0] {
            let x = Tensor::from_vec(rand_vec(&mut rng, n * cols), [n, cols]).unwrap();
            let got = x.matmul_t(&wq).unwrap();
            assert_eq!(got.dims(), [n, rows]);
            let dense = x.matmul_t(&deq).unwrap();
            if n > 0 {
                let e = max_rel_err(&got.to_vec_f32(), &dense.to_vec_f32());
                assert!(e < 2e-2, "{dt} n={n}: quantized matmul off by {e:.2e}");
            }
            let [a, b] = x.matmul_t_many([&wq, &wq]).unwrap();
            assert_eq!(a.to_vec_f32(), got.to_vec_f32());
            assert_eq!(b.to_vec_f32(), got.to_vec_f32());
        }
        // Embedding lookups decode rows exactly.
        let g = wq.gather_rows(&[3, 0, 18, 3]).unwrap();
        assert_eq!(g.dtype(), DType::F32);
        let gv = g.to_vec_f32();
        for (i, &r) in [3usize, 0, 18, 3].iter().enumerate() {
            assert_eq!(gv[i * cols..(i + 1) * cols], want[r * cols..(r + 1) * cols]);
        }
        assert!(wq.gather_rows(&[19]).is_err());
        // No views of blocks; dense-only entry points refuse the dtype.
        assert!(wq.transpose(0, 1).is_err());
        assert!(wq.narrow(0, 1, 2).is_err());
        assert!(wq.reshape([cols, rows]).is_err());
        assert!(wq.softmax_last().is_err());
        let x = Tensor::from_vec(rand_vec(&mut rng, cols), [1, cols]).unwrap();
        assert!(x.matmul(&wq).is_err());
        let short = Tensor::from_vec(rand_vec(&mut rng, 3), [1, 3]).unwrap();
        assert!(short.matmul_t(&wq).is_err(), "{dt}: inner dims differ");
    }
    // Rows that are not whole blocks, and a second quantization, are errors.
    let odd = Tensor::from_vec(vec![0.5; 2 * 40], [2, 40]).unwrap();
    assert!(odd.to_dtype(DType::Quant(QuantType::Q4_0)).is_err());
    let q8 = Tensor::from_vec(vec![0.5; 64], [2, 32])
        .unwrap()
        .to_dtype(DType::Quant(QuantType::Q8_0))
        .unwrap();
    assert!(q8.to_dtype(DType::Quant(QuantType::Q4_0)).is_err());
}

#[test]
fn combine_rows_sums_weighted_rows_and_checks_its_arguments() {
    let src = Tensor::from_vec((0..12).map(|x| x as f32).collect(), [4, 3]).unwrap();
    // out[0] = 0.5·row2 + 2·row0; out[1] = -1·row3 + 0·row1
    let y = src
        .combine_rows(&[2, 0, 3, 1], &[0.5, 2.0, -1.0, 0.0], 2)
        .unwrap();
    assert_eq!(y.dims(), &[2, 3]);
    assert_eq!(y.to_vec_f32(), vec![3.0, 5.5, 8.0, -9.0, -10.0, -11.0]);
    assert!(
        src.combine_rows(&[4], &[1.0], 1).is_err(),
        "id past the rows"
    );
    assert!(
        src.combine_rows(&[0, 1, 2], &[1.0; 3], 2).is_err(),
        "not rows of k"
    );
    assert!(
        src.combine_rows(&[0], &[1.0, 2.0], 1).is_err(),
        "lengths differ"
    );
    assert!(src.combine_rows(&[0], &[1.0], 0).is_err(), "k = 0");
    assert_eq!(src.combine_rows(&[], &[], 2).unwrap().dims(), &[0, 3]);
}
