//! GPTQ and AWQ against the NumPy references of tools/make_quant_fixtures.py
//! (tests/fixtures/quant/), plus sanity checks that can fail: GPTQ beats round-to-nearest on
//! the output error, results do not depend on the thread count, and the SmolLM2 shapes are fast.

use kiln_quant::awq::{apply_clip, search_clip, search_scales};
use kiln_quant::gptq::{gptq, GptqConfig, Hessian};
use kiln_quant::{AwqConfig, IntMatrix, IntSpec};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/quant")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn metadata(bytes: &[u8]) -> HashMap<String, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).expect("safetensors header");
    meta.metadata().clone().unwrap_or_default()
}

/// A tensor as f64 values whatever its float type, with its shape.
fn floats(st: &SafeTensors, name: &str) -> (Vec<f64>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let d = t.data();
    let v = match t.dtype() {
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        other => panic!("{name}: {other:?} is not a float"),
    };
    (v, t.shape().to_vec())
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    floats(st, name).0.iter().map(|&v| v as f32).collect()
}

fn bytes(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name).unwrap().data().to_vec()
}

fn settings(s: &str) -> HashMap<&str, usize> {
    s.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect()
}

/// `||X (W_q - W)ᵀ||²` in f64.
fn output_error(x: &[f32], n: usize, w: &[f32], m: &IntMatrix) -> f64 {
    let (rows, cols) = (m.rows, m.cols);
    let d: Vec<f64> = m
        .dequantize()
        .iter()
        .zip(w)
        .map(|(&a, &b)| a as f64 - b as f64)
        .collect();
    let mut sum = 0.0;
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let e: f64 = xt
                .iter()
                .zip(&d[r * cols..(r + 1) * cols])
                .map(|(&a, &b)| a as f64 * b)
                .sum();
            sum += e * e;
        }
    }
    sum
}

struct GptqFixture {
    bytes: Vec<u8>,
    x: Vec<f32>,
    w: Vec<f32>,
    n: usize,
    rows: usize,
    cols: usize,
}

fn gptq_fixture() -> GptqFixture {
    let bytes = fixture("gptq.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (x, xs) = floats(&st, "x");
    let (w, ws) = floats(&st, "w");
    GptqFixture {
        x: x.iter().map(|&v| v as f32).collect(),
        w: w.iter().map(|&v| v as f32).collect(),
        n: xs[0],
        rows: ws[0],
        cols: ws[1],
        bytes,
    }
}

impl GptqFixture {
    /// The Hessian in the fixture's two batches.
    fn hessian(&self) -> Hessian {
        let mut h = Hessian::new(self.cols);
        h.add(&self.x[..100 * self.cols], 100).unwrap();
        h.add(&self.x[100 * self.cols..], self.n - 100).unwrap();
        h
    }
}

fn config(s: &HashMap<&str, usize>) -> GptqConfig {
    let spec = IntSpec {
        bits: s["bits"] as u8,
        group_size: (s["group"] > 0).then_some(s["group"]),
        sym: s["sym"] == 1,
    };
    GptqConfig {
        block_size: s["block"],
        act_order: s["act_order"] == 1,
        static_groups: s["static_groups"] == 1,
        ..GptqConfig::new(spec)
    }
}

#[test]
fn gptq_matches_the_numpy_reference() {
    let f = gptq_fixture();
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let meta = metadata(&f.bytes);
    let h = f.hessian();
    let cases: Vec<&str> = meta["cases"].split(',').collect();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let cfg = config(&settings(&meta[case]));
        let out = gptq(&f.w, f.rows, f.cols, &h, &cfg).unwrap();
        out.m.validate().unwrap();
        let packed = bytes(&st, &format!("{case}.q"));
        let want_q: Vec<u8> = packed.iter().flat_map(|&b| [b & 15, b >> 4]).collect();
        let diff = out.m.q.iter().zip(&want_q).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{case}: {diff} integers differ");
        assert_eq!(
            out.m.scales,
            f32s(&st, &format!("{case}.scales")),
            "{case}: scales"
        );
        assert_eq!(
            out.m.zeros,
            bytes(&st, &format!("{case}.zeros")),
            "{case}: zeros"
        );
        let want_g_idx = st.tensor(&format!("{case}.g_idx")).ok().map(|t| {
            t.data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
                .collect::<Vec<u32>>()
        });
        assert_eq!(out.m.g_idx, want_g_idx, "{case}: g_idx");
        let want_loss = floats(&st, &format!("{case}.loss")).0[0];
        let rel = (out.loss - want_loss).abs() / want_loss;
        assert!(rel < 1e-9, "{case}: loss {} vs {want_loss}", out.loss);
    }
}

#[test]
fn gptq_beats_round_to_nearest_on_the_output_error() {
    let f = gptq_fixture();
    let meta = metadata(&f.bytes);
    let h = f.hessian();
    for case in meta["cases"].split(',') {
        let cfg = config(&settings(&meta[case]));
        let out = gptq(&f.w, f.rows, f.cols, &h, &cfg).unwrap();
        let rtn = IntMatrix::rtn(&f.w, f.rows, f.cols, cfg.spec).unwrap();
        let (e_gptq, e_rtn) = (
            output_error(&f.x, f.n, &f.w, &out.m),
            output_error(&f.x, f.n, &f.w, &rtn),
        );
        assert!(e_gptq < e_rtn, "{case}: GPTQ {e_gptq} >= RTN {e_rtn}");
        // With correlated inputs the gap is large; a broken propagation lands near RTN.
        assert!(e_gptq < 0.7 * e_rtn, "{case}: GPTQ {e_gptq} vs RTN {e_rtn}");
    }
}

#[test]
fn gptq_and_hessian_do_not_depend_on_the_thread_count() {
    let f = gptq_fixture();
    let spec = IntSpec {
        bits: 4,
        group_size: Some(64),
        sym: false,
    };
    let cfg = GptqConfig {
        act_order: true,
        block_size: 40,
        ..GptqConfig::new(spec)
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let h = f.hessian();
            let out = gptq(&f.w, f.rows, f.cols, &h, &cfg).unwrap();
            (h.matrix().to_vec(), out)
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert!(one.0 == other.0, "Hessian differs on {threads} threads");
        assert!(one.1 == other.1, "GPTQ differs on {threads} threads");
    }
}

#[test]
fn gptq_rejects_bad_input() {
    let spec = IntSpec {
        bits: 4,
        group_size: Some(32),
        sym: false,
    };
    let h = Hessian::new(64);
    let w = vec![0.0f32; 2 * 64];
    assert!(gptq(&w[..100], 2, 64, &h, &GptqConfig::new(spec)).is_err());
    assert!(gptq(&w, 4, 32, &Hessian::new(32), &GptqConfig::new(spec)).is_ok());
    assert!(gptq(&w, 2, 64, &Hessian::new(32), &GptqConfig::new(spec)).is_err());
    let zero_block = GptqConfig {
        block_size: 0,
        ..GptqConfig::new(spec)
    };
    assert!(gptq(&w, 2, 64, &h, &zero_block).is_err());
    let mut h = Hessian::new(64);
    assert!(h.add(&[0.0; 65], 1).is_err());
    // An empty Hessian: every column is dead, the weights quantize to exact zeros.
    let w: Vec<f32> = (0..128).map(|i| i as f32 / 100.0).collect();
    let out = gptq(&w, 2, 64, &h, &GptqConfig::new(spec)).unwrap();
    assert!(out.m.dequantize().iter().all(|&v| v == 0.0));
}

struct AwqFixture {
    bytes: Vec<u8>,
    x: Vec<f32>,
    n: usize,
    cols: usize,
    w1: Vec<f32>,
    w2: Vec<f32>,
}

fn awq_fixture() -> AwqFixture {
    let bytes = fixture("awq.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (x, xs) = floats(&st, "x");
    let (w1, w2) = (f32s(&st, "w1"), f32s(&st, "w2"));
    AwqFixture {
        x: x.iter().map(|&v| v as f32).collect(),
        n: xs[0],
        cols: xs[1],
        w1,
        w2,
        bytes,
    }
}

fn spec(sym: bool) -> IntSpec {
    IntSpec {
        bits: 4,
        group_size: Some(32),
        sym,
    }
}

#[test]
fn awq_scales_match_the_numpy_reference() {
    let f = awq_fixture();
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let (r1, r2) = (f.w1.len() / f.cols, f.w2.len() / f.cols);
    for (case, duo) in [("duo", true), ("x_only", false)] {
        let cfg = AwqConfig {
            duo_scaling: duo,
            ..AwqConfig::new(spec(false))
        };
        let got = search_scales(&f.x, f.n, f.cols, &[(&f.w1, r1), (&f.w2, r2)], &cfg).unwrap();
        let want_ratio = f32s(&st, &format!("{case}.ratio"))[0];
        assert_eq!(got.ratio, want_ratio, "{case}: ratio");
        let want = f32s(&st, &format!("{case}.scales"));
        for (c, (a, b)) in got.scales.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{case}: scale {c}: {a} vs {b}"
            );
        }
        let want_loss = floats(&st, &format!("{case}.loss")).0[0];
        let rel = (got.loss - want_loss).abs() / want_loss;
        assert!(rel < 1e-9, "{case}: loss {} vs {want_loss}", got.loss);
        // Salient channels get the largest scales.
        let top = (0..f.cols).max_by(|&a, &b| got.scales[a].total_cmp(&got.scales[b]));
        assert!(
            [5, 37, 64, 99, 120].contains(&top.unwrap()),
            "{case}: top channel {top:?}"
        );
    }
}

#[test]
fn awq_clip_matches_the_numpy_reference() {
    let f = awq_fixture();
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let s = f32s(&st, "duo.scales");
    let cols = f.cols;
    // clip_w1: as AWQ runs it, on W·diag(s) with X·diag(1/s).
    let xs: Vec<f32> =
        f.x.chunks_exact(cols)
            .flat_map(|r| r.iter().zip(&s).map(|(&x, &s)| x / s))
            .collect();
    let w1s: Vec<f32> =
        f.w1.chunks_exact(cols)
            .flat_map(|r| r.iter().zip(&s).map(|(&w, &s)| w * s))
            .collect();
    // (case, x, w, sym, clip_tokens)
    type Case<'a> = (&'a str, &'a [f32], &'a [f32], bool, usize);
    let cases: [Case; 2] = [
        ("clip_w1", &xs, &w1s, false, 100),
        ("clip_w2_sym", &f.x, &f.w2, true, 512),
    ];
    for (case, x, w, sym, clip_tokens) in cases {
        let rows = w.len() / cols;
        let cfg = AwqConfig {
            clip_tokens,
            ..AwqConfig::new(spec(sym))
        };
        let got = search_clip(x, f.n, w, rows, cols, &cfg).unwrap();
        let want = f32s(&st, &format!("{case}.max_vals"));
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "{case}: (row, group) {k}: {a} vs {b}"
            );
        }
        // Clipping to the chosen values lowers the output error of the rounded weights.
        let mut clipped = w.to_vec();
        apply_clip(&mut clipped, rows, cols, 32, &got).unwrap();
        let m_clip = IntMatrix::rtn(&clipped, rows, cols, spec(sym)).unwrap();
        let m_rtn = IntMatrix::rtn(w, rows, cols, spec(sym)).unwrap();
        let (e_clip, e_rtn) = (
            output_error(x, f.n, w, &m_clip),
            output_error(x, f.n, w, &m_rtn),
        );
        assert!(e_clip < e_rtn, "{case}: clipped {e_clip} >= plain {e_rtn}");
    }
}

#[test]
fn awq_rejects_bad_input() {
    let cfg = AwqConfig::new(spec(false));
    let x = vec![1.0f32; 4 * 64];
    let w = vec![0.5f32; 2 * 64];
    assert!(search_scales(&x, 4, 64, &[], &cfg).is_err());
    assert!(search_scales(&x, 4, 64, &[(&w[..64], 2)], &cfg).is_err());
    assert!(search_scales(&x, 3, 64, &[(&w, 2)], &cfg).is_err());
    assert!(search_scales(&x, 4, 64, &[(&w, 2)], &cfg).is_ok());
    assert!(search_clip(&x, 4, &w, 2, 64, &cfg).is_ok());
    assert!(search_clip(&x, 4, &w, 3, 64, &cfg).is_err());
    let mut w = w;
    assert!(apply_clip(&mut w, 2, 64, 32, &[1.0; 3]).is_err());
    assert!(apply_clip(&mut w, 2, 64, 32, &[-1.0; 4]).is_err());
    apply_clip(&mut w, 2, 64, 32, &[0.25; 4]).unwrap();
    assert!(w.iter().all(|&v| v == 0.25));
}

/// Deterministic pseudo-random values in [-0.5, 0.5) (an LCG; fast for large shapes).
fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// One SmolLM2-135M layer's worth of input: `n` calibration rows with correlated columns.
fn calibration(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let base = lcg(n * 16, seed);
    let mix = lcg(16 * cols, seed + 1);
    let noise = lcg(n * cols, seed + 2);
    (0..n * cols)
        .map(|k| {
            let (t, c) = (k / cols, k % cols);
            let z: f32 = (0..16).map(|p| base[t * 16 + p] * mix[p * cols + c]).sum();
            z + 0.3 * noise[k]
        })
        .collect()
}

fn smollm2_spec() -> IntSpec {
    IntSpec {
        bits: 4,
        group_size: Some(64),
        sym: false,
    }
}

/// Times the two large SmolLM2-135M shapes (`cargo test --release -- --nocapture` to read).
#[test]
fn gptq_smollm2_shapes_time() {
    const N: usize = 2224;
    for (rows, cols) in [(576, 1536), (1536, 576)] {
        let x = calibration(N, cols, 7);
        let w: Vec<f32> = lcg(rows * cols, 11).iter().map(|v| v * 0.05).collect();
        let t0 = Instant::now();
        let mut h = Hessian::new(cols);
        for chunk in x.chunks(512 * cols) {
            h.add(chunk, chunk.len() / cols).unwrap();
        }
        let t1 = Instant::now();
        let out = gptq(&w, rows, cols, &h, &GptqConfig::new(smollm2_spec())).unwrap();
        let t2 = Instant::now();
        println!(
            "GPTQ {rows}x{cols} 4-bit g64 on {} threads: Hessian over {N} rows {:.3} s, \
             quantize {:.3} s, loss {:.4}",
            rayon::current_num_threads(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            out.loss
        );
        let rtn = IntMatrix::rtn(&w, rows, cols, smollm2_spec()).unwrap();
        let sample = 256 * cols;
        assert!(
            output_error(&x[..sample], 256, &w, &out.m) < output_error(&x[..sample], 256, &w, &rtn)
        );
    }
}

/// All 210 linears of SmolLM2-135M (30 layers; the Hessian shared by the linears of one input),
/// random weights and inputs: `cargo test --release -p kiln-quant --test gptq_awq -- --ignored
/// --nocapture smollm2_all`.
#[test]
#[ignore = "about 10 s; run by hand to time the whole model"]
fn gptq_smollm2_all_linears_time() {
    const N: usize = 2224;
    let t0 = Instant::now();
    let mut n_linears = 0;
    for layer in 0..30u64 {
        // (input columns, [(name, rows)])
        let inputs: [(usize, &[usize]); 4] = [
            (576, &[576, 192, 192]),
            (576, &[576]),
            (576, &[1536, 1536]),
            (1536, &[576]),
        ];
        for (k, (cols, linears)) in inputs.iter().enumerate() {
            let x = lcg(N * cols, layer * 10 + k as u64);
            let mut h = Hessian::new(*cols);
            h.add(&x, N).unwrap();
            for (j, &rows) in linears.iter().enumerate() {
                let w = lcg(rows * cols, layer * 100 + j as u64 + 50);
                gptq(&w, rows, *cols, &h, &GptqConfig::new(smollm2_spec())).unwrap();
                n_linears += 1;
            }
        }
    }
    assert_eq!(n_linears, 210);
    println!(
        "GPTQ of SmolLM2-135M's 210 linears (4-bit g64, Hessians over {N} rows) on {} threads: {:.2} s",
        rayon::current_num_threads(),
        t0.elapsed().as_secs_f64()
    );
}
