//! The mixture-of-experts layer against its own definition: grouped dispatch equals the
//! per-token loop and a plain host computation of `Σ_k w_k · expert_k(x) + σ(g·x) · shared(x)`;
//! a token's result does not depend on which other tokens share its step.

use kiln_nn::{Activation, Dispatch, GatedMlp, Linear, Moe, MoeSpec};
use kiln_tensor::Tensor;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    fn linear(&mut self, out: usize, inp: usize) -> (Linear, Vec<f32>) {
        let w = self.vec(out * inp, 0.5);
        (
            Linear::from_dense(Tensor::from_vec(w.clone(), [out, inp]).unwrap(), None).unwrap(),
            w,
        )
    }
}

/// `x · Wᵀ` on the host.
fn mm(x: &[f32], w: &[f32], out: usize) -> Vec<f32> {
    let inp = w.len() / out;
    x.chunks(inp)
        .flat_map(|r| {
            (0..out).map(move |o| {
                r.iter()
                    .zip(&w[o * inp..(o + 1) * inp])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            })
        })
        .collect()
}

struct HostMlp {
    g: Vec<f32>,
    u: Vec<f32>,
    d: Vec<f32>,
}

impl HostMlp {
    fn forward(&self, x: &[f32], i: usize, h: usize) -> Vec<f32> {
        let (g, u) = (mm(x, &self.g, i), mm(x, &self.u, i));
        let a: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        mm(&a, &self.d, h)
    }
}

fn mlp(rng: &mut Rng, h: usize, i: usize) -> (GatedMlp, HostMlp) {
    let (g, gw) = rng.linear(i, h);
    let (u, uw) = rng.linear(i, h);
    let (d, dw) = rng.linear(h, i);
    (
        GatedMlp::from_parts(g, u, d, Activation::Silu),
        HostMlp {
            g: gw,
            u: uw,
            d: dw,
        },
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn grouped_dispatch_equals_per_token_and_the_definition() {
    let (h, i, e, k, n) = (24, 16, 6, 2, 37);
    for (shared, norm) in [(false, true), (true, false)] {
        let mut rng = Rng(7 + shared as u64);
        let (gate, gate_w) = rng.linear(e, h);
        let (experts, host): (Vec<_>, Vec<_>) = (0..e).map(|_| mlp(&mut rng, h, i)).unzip();
        let sh = shared.then(|| {
            let (m, hm) = mlp(&mut rng, h, 20);
            let (g, gw) = rng.linear(1, h);
            ((m, g), (hm, gw))
        });
        let (sh_layers, sh_host) = match sh {
            Some((l, host)) => (Some(l), Some(host)),
            None => (None, None),
        };
        let spec = MoeSpec {
            hidden: h,
            n_experts: e,
            top_k: k,
            intermediate: i,
            norm_topk_prob: norm,
            shared_intermediate: shared.then_some(20),
            act: Activation::Silu,
        };
        let moe = Moe::from_parts(gate, experts, sh_layers, spec).unwrap();
        let xs = rng.vec(n * h, 2.0);
        let x = Tensor::from_vec(xs.clone(), [n, h]).unwrap();
        let grouped = moe.forward(&x).unwrap().to_vec_f32();
        let per_token = moe
            .forward_with(&x, Dispatch::PerToken)
            .unwrap()
            .to_vec_f32();
        assert!(
            max_diff(&grouped, &per_token) < 1e-5,
            "grouped vs per-token"
        );

        // The definition, token by token on the host.
        let mut want = Vec::new();
        for t in 0..n {
            let xt = &xs[t * h..(t + 1) * h];
            let logits = mm(xt, &gate_w, e);
            let m = logits.iter().copied().fold(f32::MIN, f32::max);
            let p: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
            let z: f32 = p.iter().sum();
            let p: Vec<f32> = p.iter().map(|x| x / z).collect();
            let mut idx: Vec<usize> = (0..e).collect();
            idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let top = &idx[..k];
            let s: f32 = if norm {
                top.iter().map(|&j| p[j]).sum()
            } else {
                1.0
            };
            let mut y = vec![0.0f32; h];
            for &j in top {
                for (a, b) in y.iter_mut().zip(host[j].forward(xt, i, h)) {
                    *a += p[j] / s * b;
                }
            }
            if let Some((hm, gw)) = &sh_host {
                let g = 1.0 / (1.0 + (-mm(xt, gw, 1)[0]).exp());
                for (a, b) in y.iter_mut().zip(hm.forward(xt, 20, h)) {
                    *a += g * b;
                }
            }
            want.extend(y);
        }
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
        assert!(
            max_diff(&grouped, &want) / scale < 1e-5,
            "grouped vs definition"
        );

        // Alone or packed with other tokens: the same rows.
        for t in [0, 5, n - 1] {
            let alone = moe
                .forward(&x.narrow(0, t, 1).unwrap().contiguous())
                .unwrap()
                .to_vec_f32();
            assert!(
                max_diff(&alone, &grouped[t * h..(t + 1) * h]) < 1e-5,
                "token {t} alone"
            );
        }
        // Statistics: every token counted once per layer call, k picks each.
        let st = moe.stats();
        assert_eq!(st.tokens, (2 * n + 3) as u64);
        assert_eq!(st.expert_tokens.iter().sum::<u64>(), st.tokens * k as u64);
        moe.reset_stats();
        assert_eq!(moe.stats().tokens, 0);
    }
}

#[test]
fn empty_step_and_bad_parts_are_errors_not_panics() {
    let mut rng = Rng(1);
    let (gate, _) = rng.linear(3, 8);
    let experts: Vec<GatedMlp> = (0..2).map(|_| mlp(&mut rng, 8, 4).0).collect();
    let spec = MoeSpec {
        hidden: 8,
        n_experts: 3,
        top_k: 2,
        intermediate: 4,
        norm_topk_prob: true,
        shared_intermediate: None,
        act: Activation::Silu,
    };
    assert!(Moe::from_parts(gate.clone(), experts.clone(), None, spec.clone()).is_err());
    let mut experts = experts;
    experts.push(mlp(&mut rng, 8, 4).0);
    let moe = Moe::from_parts(gate, experts, None, spec).unwrap();
    let y = moe.forward(&Tensor::zeros([0, 8])).unwrap();
    assert_eq!(y.dims(), &[0, 8]);
}
