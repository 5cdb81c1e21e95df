//! The mixture-of-experts options of the LLaMA-style decoder (MixtralForCausalLM,
//! Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM): which layers are sparse and how
//! their router decides, from config.json (transformers 4.x and 5.x write the same keys) or the
//! GGUF metadata translated into it; and the routing statistics a model reports.
//!
//! Reference: transformers `MixtralConfig`, `Qwen2MoeConfig` (`decoder_sparse_step`,
//! `mlp_only_layers`, shared expert), `Qwen3MoeConfig`, `OlmoeConfig`. A key that changes the
//! router in a way kiln does not implement (`scoring_func` other than softmax, DeepSeek's
//! grouped top-k, a routed scaling factor) is refused by name rather than silently ignored.

use kiln_nn::{Activation, MoeSpec, RouterStats};
use serde_json::Value;

use crate::config::HfConfig;
use crate::Result;

#[derive(Debug, Clone)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size (`moe_intermediate_size`, or Mixtral's
    /// `intermediate_size`).
    pub intermediate: usize,
    pub norm_topk_prob: bool,
    pub shared_intermediate: Option<usize>,
    /// Per layer: whether its MLP is the mixture.
    pub sparse: Vec<bool>,
    /// Reported beside the auxiliary loss; training multiplies the loss by it.
    pub router_aux_loss_coef: f64,
}

impl MoeConfig {
    /// `None` for a dense model (no expert count, or zero experts).
    pub fn from_hf(c: &HfConfig, n_layers: usize) -> Result<Option<MoeConfig>> {
        let n_experts = match c.opt_usize("num_local_experts")? {
            Some(n) => Some(n),
            None => c.opt_usize("num_experts")?,
        };
        let Some(n_experts) = n_experts.filter(|&n| n > 0) else {
            return Ok(None);
        };
        refuse_router_variants(c)?;
        let top_k = c.usize("num_experts_per_tok")?;
        if top_k == 0 || top_k > n_experts {
            return Err(c.bad(format!(
                "`num_experts_per_tok` {top_k} must be between 1 and the {n_experts} experts"
            )));
        }
        let model_type = c.str("model_type").unwrap_or("");
        let intermediate = match c.opt_usize("moe_intermediate_size")? {
            Some(i) => i,
            None => c.usize("intermediate_size")?,
        };
        // Mixtral's router always renormalizes (it has no key for it).
        let norm_topk_prob = model_type == "mixtral" || c.bool_or("norm_topk_prob", false);
        let shared_intermediate = c
            .opt_usize("shared_expert_intermediate_size")?
            .filter(|&s| s > 0);
        let step = c.opt_usize("decoder_sparse_step")?.unwrap_or(1);
        if step == 0 {
            return Err(c.bad("`decoder_sparse_step` must be at least 1".into()));
        }
        let mlp_only: Vec<usize> = match c.json.get("mlp_only_layers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|x| x as usize)
                        .ok_or_else(|| c.bad("`mlp_only_layers` must list layer indices".into()))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(c.bad("`mlp_only_layers` must be a list".into())),
        };
        let sparse = (0..n_layers)
            .map(|i| !mlp_only.contains(&i) && (i + 1) % step == 0)
            .collect();
        Ok(Some(MoeConfig {
            n_experts,
            top_k,
            intermediate,
            norm_topk_prob,
            shared_intermediate,
            sparse,
            router_aux_loss_coef: c.f64_or("router_aux_loss_coef", 0.001)?,
        }))
    }

    pub fn spec(&self, hidden: usize, act: Activation) -> MoeSpec {
        MoeSpec {
            hidden,
            n_experts: self.n_experts,
            top_k: self.top_k,
            intermediate: self.intermediate,
            norm_topk_prob: self.norm_topk_prob,
            shared_intermediate: self.shared_intermediate,
            act,
        }
    }
}

/// Router settings of other MoE families that would change the computation.
fn refuse_router_variants(c: &HfConfig) -> Result<()> {
    let s = |key: &str| c.json.get(key).filter(|v| !v.is_null());
    if let Some(v) = s("scoring_func") {
        if v.as_str() != Some("softmax") {
            return Err(c.bad(format!(
                "`scoring_func` {v} is not supported: kiln's router scores experts with softmax"
            )));
        }
    }
    if let Some(v) = s("topk_method") {
        if v.as_str() != Some("greedy") {
            return Err(c.bad(format!(
                "`topk_method` {v} is not supported: kiln's router takes a greedy top-k"
            )));
        }
    }
    if let Some(v) = s("routed_scaling_factor") {
        if v.as_f64() != Some(1.0) {
            return Err(c.bad(format!(
                "`routed_scaling_factor` {v} is not supported (only 1.0)"
            )));
        }
    }
    Ok(())
}

/// A model's routing statistics since the last reset.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeReport {
    /// `(layer index, its router's statistics)` for every sparse layer, in order.
    pub layers: Vec<(usize, RouterStats)>,
    pub router_aux_loss_coef: f64,
}

impl MoeReport {
    /// transformers' `aux_loss` (before the coefficient) over every sparse layer.
    pub fn aux_loss(&self) -> f64 {
        RouterStats::aux_loss(self.layers.iter().map(|(_, s)| s))
    }
}
