//! Every backend op on CUDA against the CPU backend (the oracle), by NMSE: f32, bf16 and f16
//! operands, odd sizes, strided (transposed, narrowed) inputs and empty shapes (norms, the fused
//! residual LayerNorm, row stacking, softmax, RoPE, gather, weighted row sums, matmul,
//! elementwise); paged attention
//! over scattered block tables with GQA, windows, ALiBi and T5 bias; the KV write. Without a
//! GPU each test prints why and passes, unless `KILN_REQUIRE_GPU=1` (scripts/test-gpu.sh).

use kiln_tensor::{
    AttnArgs, BinaryOp, DType, Device, HostMeta, KvLayout, RelBias, RopeStyle, Tensor, UnaryOp,
};

fn gpu(test: &str) -> Option<Device> {
    let required = std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match Device::Cuda(0).check() {
        Ok(()) => Some(Device::Cuda(0)),
        Err(e) if !required => {
            println!("skipping {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: KILN_REQUIRE_GPU=1 but {e}"),
    }
}

/// Deterministic values in about [-2, 2].
fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    num / den.max(1e-30)
}

/// Bounds per dtype: f32 kernels match the CPU to rounding (1e-10); bf16/f16 storage rounds
/// every value once (2⁻⁹ / 2⁻¹² relative, so NMSE ~1e-5 / 1e-7) and ops compute in f32.
fn bound(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-10,
        DType::BF16 => 1e-4,
        _ => 1e-5,
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn on(t: &Tensor, dtype: DType, dev: Device) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(dev).unwrap()
}

/// The CPU result is computed on the same dtype-rounded inputs widened to f32.
fn check(what: &str, dtype: DType, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what} {dtype}: shape");
    let e = nmse(&got.to_vec_f32(), &want.to_vec_f32());
    assert!(
        e <= bound(dtype),
        "{what} {dtype} {:?}: NMSE {e:.3e} > {:.0e}",
        want.dims(),
        bound(dtype)
    );
}

/// `t` rounded to `dtype` and back, on the CPU: the oracle's input.
fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

#[test]
fn matmul_dense_and_transposed() {
    let Some(dev) = gpu("matmul_dense_and_transposed") else {
        return;
    };
    for (m, k, n) in [
        (1, 1, 1),
        (3, 17, 5),
        (1, 576, 1536),
        (64, 576, 1536),
        (7, 64, 49),
        (0, 8, 4),
    ] {
        for dtype in DTYPES {
            let a = rounded(&Tensor::from_vec(rand(m * k, 1), [m, k]).unwrap(), dtype);
            let b = rounded(&Tensor::from_vec(rand(k * n, 2), [k, n]).unwrap(), dtype);
            let w = rounded(&Tensor::from_vec(rand(n * k, 3), [n, k]).unwrap(), dtype);
            let (ga, gb, gw) = (on(&a, dtype, dev), on(&b, dtype, dev), on(&w, dtype, dev));
            // bf16/f16 outputs are rounded once more on store.
            let what = format!("matmul {m}x{k}x{n}");
            check(
                &what,
                dtype,
                &ga.matmul(&gb).unwrap(),
                &a.matmul(&b).unwrap(),
            );
            check(
                &format!("{what} (W^T)"),
                dtype,
                &ga.matmul_t(&gw).unwrap(),
                &a.matmul_t(&w).unwrap(),
            );
        }
    }
}

#[test]
fn elementwise_unary_binary_gated() {
    let Some(dev) = gpu("elementwise_unary_binary_gated") else {
        return;
    };
    let ops = [
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
        UnaryOp::Tanh,
        UnaryOp::Scale(0.37),
    ];
    for n in [1usize, 7, 33, 257, 4099] {
        for dtype in DTYPES {
            let x = rounded(
                &Tensor::from_vec(rand(n * 3, n as u64), [n, 3]).unwrap(),
                dtype,
            );
            let y = rounded(&Tensor::from_vec(rand(n * 3, 9), [n, 3]).unwrap(), dtype);
            let (gx, gy) = (on(&x, dtype, dev), on(&y, dtype, dev));
            for op in ops {
                check(
                    &format!("{op:?} n={n}"),
                    dtype,
                    &gx.unary(op).unwrap(),
                    &x.unary(op).unwrap(),
                );
                if !matches!(op, UnaryOp::Scale(_)) {
                    let (g, w) = (
                        gx.clone().gated(op, &gy).unwrap(),
                        x.clone().gated(op, &y).unwrap(),
                    );
                    check(&format!("gated {op:?} n={n}"), dtype, &g, &w);
                }
            }
            for op in [BinaryOp::Add, BinaryOp::Mul] {
                check(
                    &format!("{op:?} n={n}"),
                    dtype,
                    &gx.binary(op, &gy).unwrap(),
                    &x.binary(op, &y).unwrap(),
                );
                // A bias row broadcast over every row.
                let b = rounded(&Tensor::from_vec(rand(3, 4), [3]).unwrap(), dtype);
                let gb = on(&b, dtype, dev);
                check(
                    &format!("{op:?} broadcast n={n}"),
                    dtype,
                    &gx.binary(op, &gb).unwrap(),
                    &x.binary(op, &b).unwrap(),
                );
            }
            // Strided input: a transposed view is copied by the strided kernel.
            let t = x.transpose(0, 1).unwrap();
            let gt = gx.transpose(0, 1).unwrap();
            check(
                &format!("silu of a transposed view n={n}"),
                dtype,
                &gt.silu().unwrap(),
                &t.silu().unwrap(),
            );
            // Relu is exact in every dtype.
            assert_eq!(
                gx.relu().unwrap().to_vec_f32(),
                x.relu().unwrap().to_vec_f32(),
                "relu exact"
            );
        }
    }
}

#[test]
fn norms_softmax_rope_gather() {
    let Some(dev) = gpu("norms_softmax_rope_gather") else {
        return;
    };
    for (rows, cols) in [(1usize, 1usize), (3, 7), (5, 576), (2, 4097), (0, 64)] {
        for dtype in DTYPES {
            let x = rounded(
                &Tensor::from_vec(rand(rows * cols, 5), [rows, cols]).unwrap(),
                dtype,
            );
            let w = rounded(&Tensor::from_vec(rand(cols, 6), [cols]).unwrap(), dtype);
            let b = rounded(&Tensor::from_vec(rand(cols, 7), [cols]).unwrap(), dtype);
            let (gx, gw, gb) = (on(&x, dtype, dev), on(&w, dtype, dev), on(&b, dtype, dev));
            let what = format!("{rows}x{cols}");
            check(
                &format!("rms_norm {what}"),
                dtype,
                &gx.rms_norm(&gw, 1e-5).unwrap(),
                &x.rms_norm(&w, 1e-5).unwrap(),
            );
            check(
                &format!("layer_norm {what}"),
                dtype,
                &gx.layer_norm(&gw, Some(&gb), 1e-5).unwrap(),
                &x.layer_norm(&w, Some(&b), 1e-5).unwrap(),
            );
            check(
                &format!("layer_norm no bias {what}"),
                dtype,
                &gx.layer_norm(&gw, None, 1e-5).unwrap(),
                &x.layer_norm(&w, None, 1e-5).unwrap(),
            );
            check(
                &format!("softmax {what}"),
                dtype,
                &gx.softmax_last().unwrap(),
                &x.softmax_last().unwrap(),
            );
            let y = rounded(
                &Tensor::from_vec(rand(rows * cols, 9), [rows, cols]).unwrap(),
                dtype,
            );
            let gy = on(&y, dtype, dev);
            check(
                &format!("add_layer_norm {what}"),
                dtype,
                &gx.clone()
                    .add_layer_norm(&gy, &gw, Some(&gb), 1e-5)
                    .unwrap(),
                &x.clone().add_layer_norm(&y, &w, Some(&b), 1e-5).unwrap(),
            );
            // Stacking rows: parts of odd sizes, an empty one, a strided (transposed) one.
            let t = Tensor::from_vec(rand(cols * 2, 10), [cols, 2])
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            let parts = [
                x.clone(),
                Tensor::zeros([0, cols]),
                rounded(&t.contiguous(), dtype),
                y.clone(),
            ];
            let gparts = [
                gx.clone(),
                on(&parts[1], dtype, dev),
                on(&t, dtype, dev),
                gy.clone(),
            ];
            assert_eq!(
                Tensor::cat_rows(&gparts).unwrap().to_vec_f32(),
                Tensor::cat_rows(&parts).unwrap().to_vec_f32(),
                "cat_rows {what} {dtype}"
            );
            if rows > 0 {
                let ids: Vec<u32> = (0..9).map(|i| (i * 7 % rows) as u32).collect();
                assert_eq!(
                    gx.gather_rows(&ids).unwrap().to_vec_f32(),
                    x.gather_rows(&ids).unwrap().to_vec_f32(),
                    "gather {what} {dtype}"
                );
                assert!(
                    gx.gather_rows(&[rows as u32]).is_err(),
                    "out-of-range id is an error"
                );
            }
        }
    }
    for (n_tok, n_heads, head_dim, rot) in [
        (1usize, 1usize, 2usize, 2usize),
        (5, 3, 64, 64),
        (9, 2, 80, 40),
        (4, 4, 128, 128),
    ] {
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            for dtype in DTYPES {
                let x = rounded(
                    &Tensor::from_vec(
                        rand(n_tok * n_heads * head_dim, 8),
                        [n_tok, n_heads * head_dim],
                    )
                    .unwrap(),
                    dtype,
                );
                let pos: Vec<u32> = (0..n_tok as u32).map(|p| p * 37 + 3).collect();
                let inv: Vec<f32> = (0..rot / 2)
                    .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rot as f32))
                    .collect();
                let (p, f) = (
                    Tensor::from_u32(pos.clone(), [n_tok]).unwrap(),
                    Tensor::from_vec(inv.clone(), [rot / 2]).unwrap(),
                );
                let want = x.clone().rope(n_heads, &p, &f, 1.3, style).unwrap();
                let got = on(&x, dtype, dev)
                    .rope(
                        n_heads,
                        &p.to_device(dev).unwrap(),
                        &f.to_device(dev).unwrap(),
                        1.3,
                        style,
                    )
                    .unwrap();
                check(
                    &format!("rope {n_tok}x{n_heads}x{head_dim} rot {rot} {style:?}"),
                    dtype,
                    &got.reshape(want.dims()).unwrap(),
                    &want,
                );
            }
        }
    }
}

#[test]
fn casts_and_copies_round_trip_exactly() {
    let Some(dev) = gpu("casts_and_copies_round_trip_exactly") else {
        return;
    };
    let x = Tensor::from_vec(rand(6 * 35, 11), [6, 35]).unwrap();
    for dtype in DTYPES {
        let host = x.to_dtype(dtype).unwrap();
        let g = host.to_device(dev).unwrap();
        assert_eq!(g.to_vec_f32(), host.to_vec_f32(), "upload/download {dtype}");
        // Cast on the device from f32 = the CPU's rounding (round to nearest even).
        let gc = x.to_device(dev).unwrap().to_dtype(dtype).unwrap();
        assert_eq!(
            gc.to_vec_f32(),
            host.to_vec_f32(),
            "device cast f32 -> {dtype}"
        );
        let v = g.narrow(1, 3, 20).unwrap().transpose(0, 1).unwrap();
        let hv = host.narrow(1, 3, 20).unwrap().transpose(0, 1).unwrap();
        assert_eq!(
            v.deep_copy().unwrap().to_vec_f32(),
            hv.to_vec_f32(),
            "strided copy {dtype}"
        );
    }
    let ids = Tensor::from_u32((0..40).collect(), [5, 8]).unwrap();
    let gi = ids.to_device(dev).unwrap();
    assert_eq!(
        gi.transpose(0, 1)
            .unwrap()
            .deep_copy()
            .unwrap()
            .to_vec_u32()
            .unwrap(),
        ids.transpose(0, 1).unwrap().to_vec_u32().unwrap()
    );
}

/// Paged attention: several sequences with scattered block tables, KV written on each device
/// from the same rows, then prefill (many queries per sequence) and decode (one at the end).
#[test]
fn paged_attention_and_kv_write() {
    let Some(dev) = gpu("paged_attention_and_kv_write") else {
        return;
    };
    let bs = 16;
    for (n_heads, n_kv, hd) in [
        (6usize, 2usize, 64usize),
        (4, 4, 80),
        (8, 1, 128),
        (2, 2, 32),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let lens = [37usize, 5, 70];
            let n_blocks = 20;
            let shape = [n_blocks, n_kv, bs, hd];
            let mut free: Vec<u32> = (0..n_blocks as u32)
                .map(|i| (i * 7 + 3) % n_blocks as u32)
                .collect();
            let tables: Vec<Vec<u32>> = lens
                .iter()
                .map(|l| (0..l.div_ceil(bs)).map(|_| free.pop().unwrap()).collect())
                .collect();
            let total: usize = lens.iter().sum();
            let k = rounded(
                &Tensor::from_vec(rand(total * n_kv * hd, 21), [total, n_kv * hd]).unwrap(),
                dtype,
            );
            let v = rounded(
                &Tensor::from_vec(rand(total * n_kv * hd, 22), [total, n_kv * hd]).unwrap(),
                dtype,
            );
            let mut slots = Vec::new();
            let mut meta = HostMeta::default();
            for (s, (&l, t)) in lens.iter().zip(&tables).enumerate() {
                for p in 0..l {
                    slots.push(t[p / bs] * bs as u32 + (p % bs) as u32);
                    meta.tok_seq.push(s as u32);
                    meta.tok_pos.push(p as u32);
                }
                meta.seq_len.push(l as u32);
                meta.tables.push(t.clone());
            }
            let slots = Tensor::from_u32(slots, [total]).unwrap();
            let (mut kc, mut vc) = (
                Tensor::zeros(shape)
                    .to_dtype(dtype)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
                Tensor::zeros(shape),
            );
            Tensor::kv_write(&k, &v, &mut kc, &mut vc, &slots).unwrap();
            let (mut gkc, mut gvc) = (
                Tensor::zeros_on(shape, dtype, dev).unwrap(),
                Tensor::zeros_on(shape, dtype, dev).unwrap(),
            );
            Tensor::kv_write(
                &on(&k, dtype, dev),
                &on(&v, dtype, dev),
                &mut gkc,
                &mut gvc,
                &slots.to_device(dev).unwrap(),
            )
            .unwrap();
            assert_eq!(gkc.to_vec_f32(), kc.to_vec_f32(), "kv_write K {dtype}");
            assert_eq!(gvc.to_vec_f32(), vc.to_vec_f32(), "kv_write V {dtype}");

            let q = rounded(
                &Tensor::from_vec(rand(total * n_heads * hd, 23), [total, n_heads * hd]).unwrap(),
                dtype,
            );
            let gq = on(&q, dtype, dev);
            let slopes = Tensor::from_vec(
                (0..n_heads).map(|h| 0.5f32.powi(h as i32 + 1)).collect(),
                [n_heads],
            )
            .unwrap();
            let n_rel = 2 * 70 + 1;
            let rel = Tensor::from_vec(rand(n_heads * n_rel, 24), [n_heads, n_rel]).unwrap();
            let (gslopes, grel) = (slopes.to_device(dev).unwrap(), rel.to_device(dev).unwrap());
            let (hm, gm) = (meta.upload(Device::Cpu).unwrap(), meta.upload(dev).unwrap());
            for (causal, window, alibi, bias) in [
                (true, None, false, false),
                (true, Some(9), false, false),
                (true, None, true, false),
                (false, None, false, true),
                (false, None, false, false),
            ] {
                let args = |q, k, v, meta, al, rb| AttnArgs {
                    q,
                    k,
                    v,
                    layout: KvLayout::paged(bs, n_kv, hd),
                    meta,
                    n_heads,
                    n_kv_heads: n_kv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    causal,
                    window,
                    alibi: if alibi { Some(al) } else { None },
                    rel_bias: if bias {
                        Some(RelBias {
                            values: rb,
                            min_rel: -70,
                            n_rel,
                        })
                    } else {
                        None
                    },
                };
                let want = Tensor::attention(&args(&q, &kc, &vc, &hm, &slopes, &rel)).unwrap();
                let got = Tensor::attention(&args(&gq, &gkc, &gvc, &gm, &gslopes, &grel)).unwrap();
                check(&format!("attention {n_heads}/{n_kv} heads hd {hd} causal {causal} window {window:?} alibi {alibi} bias {bias}"), dtype, &got, &want);
            }
        }
    }
}

/// The CPU oracle itself (runs everywhere): packed rows and paged blocks holding the same keys
/// give the same attention, and a 2-key case matches its closed form.
#[test]
fn attention_reference_layouts_agree_and_match_a_closed_form() {
    let (n_heads, n_kv, hd, n) = (2usize, 1usize, 4usize, 3usize);
    let q = Tensor::from_vec(rand(n * n_heads * hd, 31), [n, n_heads * hd]).unwrap();
    let k = Tensor::from_vec(rand(n * n_kv * hd, 32), [n, n_kv * hd]).unwrap();
    let v = Tensor::from_vec(rand(n * n_kv * hd, 33), [n, n_kv * hd]).unwrap();
    let meta = HostMeta {
        tok_seq: vec![0; n],
        tok_pos: (0..n as u32).collect(),
        seq_len: vec![n as u32],
        tables: vec![vec![0]],
    };
    let m = meta.upload(Device::Cpu).unwrap();
    let rows = Tensor::attention(&AttnArgs {
        q: &q,
        k: &k,
        v: &v,
        layout: KvLayout::rows(n_kv, hd),
        meta: &m,
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 0.5,
        causal: true,
        window: None,
        alibi: None,
        rel_bias: None,
    })
    .unwrap();
    // The same keys in a pool of 2-row blocks, table [3, 1].
    let bs = 2;
    let (mut kc, mut vc) = (
        Tensor::zeros([4, n_kv, bs, hd]),
        Tensor::zeros([4, n_kv, bs, hd]),
    );
    let slots = Tensor::from_u32(vec![6, 7, 2], [3]).unwrap();
    Tensor::kv_write(&k, &v, &mut kc, &mut vc, &slots).unwrap();
    let pm = HostMeta {
        tables: vec![vec![3, 1]],
        ..meta
    }
    .upload(Device::Cpu)
    .unwrap();
    let paged = Tensor::attention(&AttnArgs {
        q: &q,
        k: &kc,
        v: &vc,
        layout: KvLayout::paged(bs, n_kv, hd),
        meta: &pm,
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 0.5,
        causal: true,
        window: None,
        alibi: None,
        rel_bias: None,
    })
    .unwrap();
    assert!(nmse(&paged.to_vec_f32(), &rows.to_vec_f32()) < 1e-12);
    // Query row 1 (position 1), head 0: softmax over keys 0 and 1.
    let (qv, kv, vv, out) = (
        q.to_vec_f32(),
        k.to_vec_f32(),
        v.to_vec_f32(),
        rows.to_vec_f32(),
    );
    let dot = |j: usize| {
        (0..hd)
            .map(|d| qv[n_heads * hd + d] * kv[j * hd + d])
            .sum::<f32>()
            * 0.5
    };
    let (s0, s1) = (dot(0), dot(1));
    let (w0, w1) = (1.0 / (1.0 + (s1 - s0).exp()), 1.0 / (1.0 + (s0 - s1).exp()));
    for d in 0..hd {
        let want = w0 * vv[d] + w1 * vv[hd + d];
        assert!(
            (out[n_heads * hd + d] - want).abs() < 1e-5,
            "closed form at {d}"
        );
    }
    // Heads not a multiple of kv heads are an error, not a panic.
    let bad = Tensor::attention(&AttnArgs {
        q: &q,
        k: &k,
        v: &v,
        layout: KvLayout::rows(n_kv, hd),
        meta: &m,
        n_heads: 3,
        n_kv_heads: 2,
        head_dim: hd,
        scale: 0.5,
        causal: true,
        window: None,
        alibi: None,
        rel_bias: None,
    });
    assert!(bad.unwrap_err().to_string().contains("not a multiple"));
}

#[test]
fn combine_rows_weighted_sums() {
    let Some(dev) = gpu("combine_rows_weighted_sums") else {
        return;
    };
    // (rows, cols, n_out, k): a MoE combine (k experts + a shared row), odd sizes, empty.
    for (rows, cols, n_out, k) in [(40, 96, 16, 3), (7, 33, 5, 2), (9, 5, 9, 1), (4, 8, 0, 2)] {
        let src = Tensor::from_vec(rand(rows * cols, 31), [rows, cols]).unwrap();
        let ids: Vec<u32> = (0..n_out * k)
            .map(|i| ((i * 7 + 3) % rows) as u32)
            .collect();
        let w = rand(n_out * k, 32);
        for dtype in DTYPES {
            let want = rounded(&src, dtype).combine_rows(&ids, &w, k).unwrap();
            let got = on(&src, dtype, dev).combine_rows(&ids, &w, k).unwrap();
            assert_eq!(got.dtype(), dtype);
            check("combine_rows", dtype, &got, &want);
        }
    }
}

#[test]
fn mixing_devices_is_an_error() {
    let Some(dev) = gpu("mixing_devices_is_an_error") else {
        return;
    };
    let a = Tensor::from_vec(rand(4, 1), [2, 2]).unwrap();
    let g = a.to_device(dev).unwrap();
    assert!(a.matmul(&g).is_err() && g.add(&a).is_err());
}

/// Block-format weights on CUDA: uploaded as blocks and downloaded bit for bit; decoded
/// (casts, lookups) as the CPU decodes them; the quantized matmul (dequantize, then cuBLASLt)
/// equals the CPU's dense matmul on the dequantized weight, per activation dtype; several
/// weights at once equal each alone.
#[test]
fn quantized_matmul_gather_and_dequantize() {
    use kiln_tensor::QuantType;
    let Some(dev) = gpu("quantized_matmul_gather_and_dequantize") else {
        return;
    };
    for q in QuantType::ALL {
        let dt = DType::Quant(q);
        let bs = q.block_size();
        for (rows, cols) in [
            (1, bs),
            (17, 2 * bs),
            (49, 3 * bs),
            (64, 576.max(bs) / bs * bs),
        ] {
            let w = Tensor::from_vec(rand(rows * cols, 11), [rows, cols]).unwrap();
            let wq = w.to_dtype(dt).unwrap();
            let gq = wq.to_device(dev).unwrap();
            assert_eq!((gq.dtype(), gq.dims()), (dt, wq.dims()));
            let back = gq.to_device(Device::Cpu).unwrap();
            assert_eq!(back.dtype(), dt);
            let deq = wq.to_dtype(DType::F32).unwrap();
            let what = format!("{dt} {rows}x{cols}");
            assert_eq!(
                back.to_vec_f32(),
                deq.to_vec_f32(),
                "{what}: device round trip"
            );
            for to in DTYPES {
                check(
                    &format!("{what} dequantize"),
                    to,
                    &gq.to_dtype(to).unwrap(),
                    &rounded(&deq, to),
                );
            }
            let ids = [rows as u32 - 1, 0, (rows as u32) / 2, 0];
            check(
                &format!("{what} gather"),
                DType::F32,
                &gq.gather_rows(&ids).unwrap(),
                &wq.gather_rows(&ids).unwrap(),
            );
            for n in [1, 7, 8, 9, 0] {
                for dtype in DTYPES {
                    let x = rounded(
                        &Tensor::from_vec(rand(n * cols, 12), [n, cols]).unwrap(),
                        dtype,
                    );
                    let gx = on(&x, dtype, dev);
                    let got = gx.matmul_t(&gq).unwrap();
                    assert_eq!(got.dtype(), dtype);
                    let want = x.matmul_t(&rounded(&deq, dtype)).unwrap();
                    check(&format!("{what} qmatmul n={n}"), dtype, &got, &want);
                    let [a, b] = gx.matmul_t_many([&gq, &gq]).unwrap();
                    assert_eq!(a.to_vec_f32(), got.to_vec_f32());
                    assert_eq!(b.to_vec_f32(), got.to_vec_f32());
                }
            }
        }
        // Quantizing is the host's (kiln-quant's quantizers); on the device it is a clear error.
        let dense = Tensor::from_vec(rand(2 * bs, 13), [2, bs]).unwrap();
        let e = on(&dense, DType::F32, dev).to_dtype(dt).unwrap_err();
        assert!(e.to_string().contains("quantize"), "{e}");
    }
}
