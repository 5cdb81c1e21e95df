//! Mixture of experts: a router scores `n_experts` gated MLPs per token, the `top_k` best run
//! and their outputs are summed with the router's weights; optionally a shared expert runs on
//! every token, scaled by a sigmoid gate.
//!
//! Reference: transformers `MixtralSparseMoeBlock` (renormalized top-k), `Qwen2MoeSparseMoeBlock`
//! (`norm_topk_prob`, shared expert), `Qwen3MoeSparseMoeBlock`, `OlmoeSparseMoeBlock`; the
//! auxiliary loss is the Switch Transformer's (Fedus et al. 2021, eq. 4) as transformers'
//! `load_balancing_loss_func` computes it.
//!
//! **Grouped dispatch**: the router runs on the device, its `(n_tokens, n_experts)` logits come
//! to the host (softmax, top-k and the statistics are a few hundred flops there), and each
//! active expert then runs once over just its tokens (gathered rows), never a dense loop over
//! experts or a per-token loop. One [`Tensor::combine_rows`] sums each token's expert rows
//! with its weights, in expert order and the shared expert last, as transformers adds them.
//! A token's result depends only on its own rows, so a step packing many sequences gives each
//! the same answer as alone. [`Dispatch::PerToken`] is the loop grouped dispatch replaces,
//! kept as the baseline the benchmark measures.
//!
//! Expert weights are [`Linear`]s, so any storage works: dense, GGUF blocks. They load from the
//! layouts found in the wild: one tensor per expert (`experts.{e}.gate_proj` in Qwen/OLMoE,
//! `experts.{e}.w1/w3/w2` in Mixtral), transformers 5's fused `experts.gate_up_proj (E, 2I, H)`
//! and `experts.down_proj (E, H, I)`, and GGUF's stacked `ffn_{gate,up,down}_exps`.

use std::sync::{Arc, Mutex};

use kiln_tensor::Tensor;

use crate::weights::Weights;
use crate::{Activation, Error, GatedMlp, Linear, Result};

#[derive(Debug, Clone)]
pub struct MoeSpec {
    pub hidden: usize,
    pub n_experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub intermediate: usize,
    /// Renormalize the top-k probabilities to sum to one (Mixtral always; Qwen and OLMoE by
    /// `norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// The shared expert's intermediate size (Qwen2-MoE `shared_expert_intermediate_size`).
    pub shared_intermediate: Option<usize>,
    pub act: Activation,
}

/// How a step's tokens reach their experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// One matmul chain per active expert over the rows routed to it.
    Grouped,
    /// Every (token, expert) pair on its own: the baseline grouped dispatch is measured against.
    PerToken,
}

/// What one layer's router did since the last reset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouterStats {
    /// Tokens routed through the layer.
    pub tokens: u64,
    /// Per expert: how many tokens picked it among their top k.
    pub expert_tokens: Vec<u64>,
    /// Per expert: the sum over tokens of its softmax probability (the aux loss's P term).
    pub prob_sum: Vec<f64>,
    /// The sum over tokens of the router distribution's entropy, in nats.
    pub entropy_sum: f64,
}

impl RouterStats {
    fn new(n_experts: usize) -> RouterStats {
        RouterStats {
            tokens: 0,
            expert_tokens: vec![0; n_experts],
            prob_sum: vec![0.0; n_experts],
            entropy_sum: 0.0,
        }
    }

    /// The busiest expert's share over the mean share: 1 is perfect balance.
    pub fn max_over_mean_load(&self) -> f64 {
        let total: u64 = self.expert_tokens.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let max = self.expert_tokens.iter().copied().max().unwrap_or(0) as f64;
        max / (total as f64 / self.expert_tokens.len() as f64)
    }

    /// The router's mean entropy per token, nats (ln n_experts is uniform routing).
    pub fn mean_entropy(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.entropy_sum / self.tokens as f64
        }
    }

    /// transformers' `load_balancing_loss_func` over `layers` (its router logits concatenated
    /// along tokens, no attention mask), before `router_aux_loss_coef`:
    /// `E · Σ_e (C_e / T) · (P_e / T)` with `C_e` the top-k picks of expert e, `P_e` its summed
    /// probability and `T` the rows, all over every layer.
    pub fn aux_loss<'a>(layers: impl IntoIterator<Item = &'a RouterStats>) -> f64 {
        let layers: Vec<&RouterStats> = layers.into_iter().collect();
        let Some(first) = layers.first() else {
            return 0.0;
        };
        let n_experts = first.expert_tokens.len();
        let t: u64 = layers.iter().map(|l| l.tokens).sum();
        if t == 0 {
            return 0.0;
        }
        let t = t as f64;
        let sum: f64 = (0..n_experts)
            .map(|e| {
                let c: u64 = layers.iter().map(|l| l.expert_tokens[e]).sum();
                let p: f64 = layers.iter().map(|l| l.prob_sum[e]).sum();
                (c as f64 / t) * (p / t)
            })
            .sum();
        n_experts as f64 * sum
    }
}

/// A step's routing decision: each token's `top_k` experts in ascending expert order, with
/// their weights.
struct Routing {
    top_k: usize,
    experts: Vec<u32>,
    weights: Vec<f32>,
}

/// Softmax (f32), top-k (ties to the lower expert), optional renormalization; records the
/// statistics of `logits (n_tokens, n_experts)` into `stats`.
fn route(
    logits: &[f32],
    n_experts: usize,
    top_k: usize,
    norm: bool,
    stats: &mut RouterStats,
) -> Routing {
    let n = logits.len() / n_experts;
    let mut experts = Vec::with_capacity(n * top_k);
    let mut weights = Vec::with_capacity(n * top_k);
    let mut probs = vec![0.0f32; n_experts];
    let mut order: Vec<usize> = (0..n_experts).collect();
    for row in logits.chunks_exact(n_experts) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (p, &l) in probs.iter_mut().zip(row) {
            *p = (l - max).exp();
            sum += *p;
        }
        let mut entropy = 0.0f64;
        for (e, p) in probs.iter_mut().enumerate() {
            *p /= sum;
            stats.prob_sum[e] += *p as f64;
            if *p > 0.0 {
                entropy -= *p as f64 * (*p as f64).ln();
            }
        }
        stats.entropy_sum += entropy;
        stats.tokens += 1;
        for (i, o) in order.iter_mut().enumerate() {
            *o = i;
        }
        // Stable: equal probabilities keep the lower expert first.
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        // The top k in expert order (HF adds expert outputs in that order), in place.
        let picked = &mut order[..top_k];
        picked.sort_unstable();
        let total: f32 = if norm {
            picked.iter().map(|&e| probs[e]).sum()
        } else {
            1.0
        };
        for &e in picked.iter() {
            stats.expert_tokens[e] += 1;
            experts.push(e as u32);
            weights.push(probs[e] / total);
        }
    }
    Routing {
        top_k,
        experts,
        weights,
    }
}

#[derive(Clone)]
struct SharedExpert {
    mlp: GatedMlp,
    /// `(1, hidden)`: the sigmoid gate's logit.
    gate: Linear,
}

#[derive(Clone)]
pub struct Moe {
    gate: Linear,
    experts: Vec<GatedMlp>,
    shared: Option<SharedExpert>,
    spec: MoeSpec,
    stats: Arc<Mutex<RouterStats>>,
}

impl Moe {
    /// Loads the router `gate`, the experts in whichever layout the checkpoint has, and the
    /// shared expert (`shared_expert`, `shared_expert_gate`) when the spec has one.
    pub fn load(w: &Weights, spec: MoeSpec) -> Result<Moe> {
        let h = spec.hidden;
        let gate = Linear::load(w, "gate", h, spec.n_experts, false)?;
        let experts = load_experts(&w.pp("experts"), &spec)?;
        let shared = match spec.shared_intermediate {
            None => None,
            Some(si) => {
                let g = w.get("shared_expert_gate.weight")?;
                // HF (1, hidden); GGUF's ffn_gate_inp_shexp is a vector.
                let g = if g.rank() == 1 { g.reshape([1, h])? } else { g };
                if g.dims() != [1, h] {
                    return Err(Error::WrongShape {
                        name: "shared_expert_gate.weight".into(),
                        expected: vec![1, h],
                        found: g.dims().to_vec(),
                    });
                }
                Some((
                    GatedMlp::load(&w.pp("shared_expert"), h, si, spec.act, false)?,
                    Linear::from_dense(w.placement().matrix(g)?, None)?,
                ))
            }
        };
        Moe::from_parts(gate, experts, shared, spec)
    }

    /// From layers built elsewhere (tests, benchmarks): the router `(n_experts, hidden)`, the
    /// experts, and the shared expert with its `(1, hidden)` gate.
    pub fn from_parts(
        gate: Linear,
        experts: Vec<GatedMlp>,
        shared: Option<(GatedMlp, Linear)>,
        spec: MoeSpec,
    ) -> Result<Moe> {
        if spec.top_k == 0 || spec.top_k > spec.n_experts {
            return Err(Error::Config(format!(
                "mixture of experts: top_k {} of {} experts",
                spec.top_k, spec.n_experts
            )));
        }
        if experts.len() != spec.n_experts || gate.out_features() != spec.n_experts {
            return Err(Error::Config(format!(
                "mixture of experts: {} experts and a router for {}, the spec says {}",
                experts.len(),
                gate.out_features(),
                spec.n_experts
            )));
        }
        Ok(Moe {
            gate,
            experts,
            shared: shared.map(|(mlp, gate)| SharedExpert { mlp, gate }),
            stats: Arc::new(Mutex::new(RouterStats::new(spec.n_experts))),
            spec,
        })
    }

    pub fn spec(&self) -> &MoeSpec {
        &self.spec
    }

    /// `x (n_tokens, hidden) -> (n_tokens, hidden)` with grouped dispatch
    /// (`KILN_MOE_DISPATCH=per_token` switches a whole process to the per-token loop, for the
    /// model-level A/B in BENCHMARKS.md).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        static DISPATCH: std::sync::OnceLock<Dispatch> = std::sync::OnceLock::new();
        let d = *DISPATCH.get_or_init(|| match std::env::var("KILN_MOE_DISPATCH").as_deref() {
            Ok("per_token") => Dispatch::PerToken,
            _ => Dispatch::Grouped,
        });
        self.forward_with(x, d)
    }

    pub fn forward_with(&self, x: &Tensor, dispatch: Dispatch) -> Result<Tensor> {
        let (n, hidden) = x.dims2("moe")?;
        if n == 0 {
            return Ok(Tensor::zeros_on([0, hidden], x.dtype(), x.device())?);
        }
        let s = &self.spec;
        // (n_tokens, n_experts), f32 on the host; the shared expert's gate logits (n_tokens,)
        // come with them, so a device step waits for the host once per layer.
        let (logits, shared_gate) = match &self.shared {
            None => (self.gate.forward(x)?.try_to_vec_f32()?, Vec::new()),
            Some(sh) => {
                let [l, g] = Linear::forward_many([&self.gate, &sh.gate], x)?;
                (l.try_to_vec_f32()?, g.try_to_vec_f32()?)
            }
        };
        let r = {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            route(&logits, s.n_experts, s.top_k, s.norm_topk_prob, &mut stats)
        };
        // parts: expert outputs stacked in the order they ran; row_of[t·k + j]: the row of
        // token t's j-th expert among them.
        let mut parts = Vec::new();
        let mut row_of = vec![0u32; n * r.top_k];
        let mut rows = 0u32;
        match dispatch {
            Dispatch::Grouped => {
                for (e, expert) in self.experts.iter().enumerate() {
                    let mut tokens = Vec::new();
                    for (slot, &pick) in r.experts.iter().enumerate() {
                        if pick as usize == e {
                            row_of[slot] = rows + tokens.len() as u32;
                            tokens.push((slot / r.top_k) as u32);
                        }
                    }
                    if tokens.is_empty() {
                        continue;
                    }
                    // Every token picked e (always so in a one-token decode): no gather.
                    let xe = if tokens.len() == n {
                        x.clone()
                    } else {
                        x.gather_rows(&tokens)?
                    };
                    rows += tokens.len() as u32;
                    parts.push(expert.forward(&xe)?);
                }
            }
            Dispatch::PerToken => {
                for (slot, &pick) in r.experts.iter().enumerate() {
                    let xt = x.gather_rows(&[(slot / r.top_k) as u32])?;
                    parts.push(self.experts[pick as usize].forward(&xt)?);
                    row_of[slot] = rows;
                    rows += 1;
                }
            }
        }
        let (ids, weights, k) = match &self.shared {
            None => (row_of, r.weights, r.top_k),
            Some(sh) => {
                parts.push(sh.mlp.forward(x)?);
                let g = &shared_gate;
                let k = r.top_k + 1;
                let (mut ids, mut weights) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
                for t in 0..n {
                    ids.extend_from_slice(&row_of[t * r.top_k..(t + 1) * r.top_k]);
                    weights.extend_from_slice(&r.weights[t * r.top_k..(t + 1) * r.top_k]);
                    ids.push(rows + t as u32);
                    weights.push(1.0 / (1.0 + (-g[t]).exp()));
                }
                (ids, weights, k)
            }
        };
        let src = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat_rows(&parts)?
        };
        Ok(src.combine_rows(&ids, &weights, k)?)
    }

    /// The router's statistics since the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> RouterStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reset_stats(&self) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) =
            RouterStats::new(self.spec.n_experts);
    }
}

/// The experts under `w` (`…mlp.experts`), from the first layout the checkpoint has.
fn load_experts(w: &Weights, spec: &MoeSpec) -> Result<Vec<GatedMlp>> {
    let (h, i, n) = (spec.hidden, spec.intermediate, spec.n_experts);
    let act = spec.act;
    let place =
        |t: Tensor| -> Result<Linear> { Linear::from_dense(w.placement().linear(None, t)?, None) };
    // A GPTQ/AWQ checkpoint names the same linears `{name}.qweight`.
    let has = |name: &str| w.contains_linear(name);
    if has("0.gate_proj") {
        // One tensor per expert, the MLP's own names (Qwen2/3-MoE, OLMoE).
        return (0..n)
            .map(|e| GatedMlp::load(&w.pp(e), h, i, act, false))
            .collect();
    }
    if has("0.w1") {
        // Mixtral's per-expert names: w1 gate, w3 up, w2 down.
        return (0..n)
            .map(|e| {
                let x = w.pp(e);
                Ok(GatedMlp::from_parts(
                    Linear::load(&x, "w1", h, i, false)?,
                    Linear::load(&x, "w3", h, i, false)?,
                    Linear::load(&x, "w2", i, h, false)?,
                    act,
                ))
            })
            .collect();
    }
    if w.contains("gate_up_proj") {
        // transformers 5: (E, 2I, H) with gate rows then up rows, and (E, H, I).
        let gate_up = w.stacked("gate_up_proj", n, 2 * i, h)?;
        let down = w.stacked("down_proj", n, h, i)?;
        return gate_up
            .into_iter()
            .zip(down)
            .map(|(gu, d)| {
                Ok(GatedMlp::from_parts(
                    place(gu.narrow(0, 0, i)?.contiguous())?,
                    place(gu.narrow(0, i, i)?.contiguous())?,
                    place(d)?,
                    act,
                ))
            })
            .collect();
    }
    // GGUF: ffn_gate_exps / ffn_up_exps (E, I, H) and ffn_down_exps (E, H, I).
    let gates = w.stacked("gate_proj.weight", n, i, h)?;
    let ups = w.stacked("up_proj.weight", n, i, h)?;
    let downs = w.stacked("down_proj.weight", n, h, i)?;
    gates
        .into_iter()
        .zip(ups)
        .zip(downs)
        .map(|((g, u), d)| Ok(GatedMlp::from_parts(place(g)?, place(u)?, place(d)?, act)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_picks_top_k_in_expert_order_and_renormalizes() {
        let mut stats = RouterStats::new(4);
        // token 0 prefers 2 then 0; token 1 prefers 3 then 1
        let logits = [1.0, -1.0, 2.0, 0.0, -2.0, 0.5, 0.0, 3.0];
        let r = route(&logits, 4, 2, true, &mut stats);
        assert_eq!(r.experts, vec![0, 2, 1, 3]);
        assert!((r.weights[0] + r.weights[1] - 1.0).abs() < 1e-6);
        assert!(r.weights[1] > r.weights[0]);
        assert_eq!(stats.expert_tokens, vec![1, 1, 1, 1]);
        assert_eq!(stats.tokens, 2);
        let p_sum: f64 = stats.prob_sum.iter().sum();
        assert!((p_sum - 2.0).abs() < 1e-5);
        // Without renormalization the weights are the softmax probabilities themselves.
        let r = route(&logits[..4], 4, 2, false, &mut RouterStats::new(4));
        let e: Vec<f32> = logits[..4].iter().map(|l| (l - 2.0f32).exp()).collect();
        let z: f32 = e.iter().sum();
        assert!((r.weights[1] - e[2] / z).abs() < 1e-6);
    }

    #[test]
    fn aux_loss_is_one_for_perfectly_balanced_uniform_routing() {
        // Uniform probabilities and each expert picked equally: E · Σ (k/E) · (1/E) = k.
        let layer = RouterStats {
            tokens: 8,
            expert_tokens: vec![4, 4, 4, 4],
            prob_sum: vec![2.0; 4],
            entropy_sum: 8.0 * 4f64.ln(),
        };
        assert!((RouterStats::aux_loss([&layer, &layer]) - 2.0).abs() < 1e-12);
        assert!((layer.max_over_mean_load() - 1.0).abs() < 1e-12);
        assert!((layer.mean_entropy() - 4f64.ln()).abs() < 1e-12);
    }
}
