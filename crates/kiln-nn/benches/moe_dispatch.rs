//! Mixture-of-experts dispatch at SmolLM2 width (hidden 576, 8 experts of intermediate 768,
//! top-2): grouped dispatch (one matmul chain per active expert over its gathered tokens) against
//! the per-token loop over (token, expert) pairs, at 512 prefill tokens and one decode token,
//! with f32 and Q8_0 expert weights; and beside them the dense gated MLP with the same active
//! parameters (intermediate 2 · 768), the cost a MoE layer is held to.
//!
//! Run with `RAYON_NUM_THREADS=2 cargo bench -p kiln-nn --bench moe_dispatch`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_nn::{Activation, Dispatch, GatedMlp, Linear, Moe, MoeSpec};
use kiln_quant::{GgmlType, QMatrix};
use kiln_tensor::Tensor;
use std::time::Duration;

const HIDDEN: usize = 576;
const INTERMEDIATE: usize = 768;
const EXPERTS: usize = 8;
const TOP_K: usize = 2;

struct Lcg(u64);
impl Lcg {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale
            })
            .collect()
    }
}

fn linear(rng: &mut Lcg, rows: usize, cols: usize, q8: bool) -> Linear {
    let w = rng.vec(rows * cols, 0.1);
    let t = if q8 {
        let q = QMatrix::quantize(GgmlType::Q8_0, rows, cols, &w).expect("valid shape");
        Tensor::from_qmatrix(q).expect("quantized tensor")
    } else {
        Tensor::from_vec(w, [rows, cols]).expect("dense tensor")
    };
    Linear::from_dense(t, None).expect("weight")
}

fn moe(q8: bool) -> Moe {
    let mut rng = Lcg(0x2545F4914F6CDD1D);
    let experts = (0..EXPERTS)
        .map(|_| {
            GatedMlp::from_parts(
                linear(&mut rng, INTERMEDIATE, HIDDEN, q8),
                linear(&mut rng, INTERMEDIATE, HIDDEN, q8),
                linear(&mut rng, HIDDEN, INTERMEDIATE, q8),
                Activation::Silu,
            )
        })
        .collect();
    let spec = MoeSpec {
        hidden: HIDDEN,
        n_experts: EXPERTS,
        top_k: TOP_K,
        intermediate: INTERMEDIATE,
        norm_topk_prob: true,
        shared_intermediate: None,
        act: Activation::Silu,
    };
    let gate = linear(&mut rng, EXPERTS, HIDDEN, false);
    Moe::from_parts(gate, experts, None, spec).expect("consistent parts")
}

fn dense(q8: bool) -> GatedMlp {
    let mut rng = Lcg(0x9E3779B97F4A7C15);
    let i = TOP_K * INTERMEDIATE;
    GatedMlp::from_parts(
        linear(&mut rng, i, HIDDEN, q8),
        linear(&mut rng, i, HIDDEN, q8),
        linear(&mut rng, HIDDEN, i, q8),
        Activation::Silu,
    )
}

fn bench(c: &mut Criterion) {
    for q8 in [false, true] {
        let layer = moe(q8);
        let mlp = dense(q8);
        let format = if q8 { "q8_0" } else { "f32" };
        for n_tokens in [512usize, 1] {
            let x = Tensor::from_vec(
                Lcg(n_tokens as u64).vec(n_tokens * HIDDEN, 2.0),
                [n_tokens, HIDDEN],
            )
            .expect("input");
            let mut g = c.benchmark_group(format!("moe_{format}_tokens_{n_tokens}"));
            g.throughput(Throughput::Elements(n_tokens as u64));
            g.measurement_time(Duration::from_secs(if n_tokens > 1 { 8 } else { 3 }));
            g.sample_size(10);
            for (name, d) in [
                ("grouped", Dispatch::Grouped),
                ("per_token", Dispatch::PerToken),
            ] {
                g.bench_with_input(BenchmarkId::from_parameter(name), &d, |b, &d| {
                    b.iter(|| layer.forward_with(&x, d).expect("forward"))
                });
            }
            g.bench_function("dense_same_active_params", |b| {
                b.iter(|| mlp.forward(&x).expect("forward"))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
