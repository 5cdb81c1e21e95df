//! The LLaMA family: LlamaForCausalLM, MistralForCausalLM (sliding window), Qwen2ForCausalLM
//! (q/k/v biases), and SmolLM2 (LLaMA with tied embeddings) from safetensors or GGUF; and its
//! mixture-of-experts members, whose blocks swap the MLP for a [`Moe`] where the config says
//! (`moe.rs`): MixtralForCausalLM, Qwen2MoeForCausalLM (shared expert, dense layers mixed in),
//! Qwen3MoeForCausalLM (per-head q/k RMSNorm), OlmoeForCausalLM (q/k RMSNorm over the whole
//! projection).
//!
//! Reference: transformers `models/llama/modeling_llama.py`. A block is pre-norm:
//! `h = x + attn(rms_norm(x)); out = h + mlp(rms_norm(h))`, SwiGLU MLP, RoPE on q and k.
//! Deviation: GGUF checkpoints keep llama.cpp's permuted q/k rows and use interleaved rotary
//! pairs, which is the same function as HF's rotate-half on unpermuted rows.

use kiln_nn::rope::RopeScaling;
use kiln_nn::{
    Activation, Attention, AttentionSpec, Batch, Embedding, GatedMlp, KvCache, KvStore, Linear,
    Moe, QkNorm, RmsNorm, Rope, RouterStats, Weights,
};
use kiln_tensor::RopeStyle;
use kiln_tensor::Tensor;

use crate::config::HfConfig;
use crate::moe::{MoeConfig, MoeReport};
use crate::Result;

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub act: Activation,
    /// Per layer: the sliding window, if that layer has one.
    pub windows: Vec<Option<usize>>,
    pub rope: Rope,
    pub qk_norm: Option<QkNorm>,
    /// The mixture of experts, when the model has one (and which layers use it).
    pub moe: Option<MoeConfig>,
}

impl LlamaConfig {
    pub fn from_hf(c: &HfConfig, rope_style: RopeStyle) -> Result<LlamaConfig> {
        let hidden = c.usize("hidden_size")?;
        let n_heads = c.usize("num_attention_heads")?;
        let n_layers = c.usize("num_hidden_layers")?;
        let n_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(c.bad(format!(
                "num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"
            )));
        }
        let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden / n_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(c.bad(format!("head size {head_dim} must be even and non-zero")));
        }
        let model_type = c.str("model_type").unwrap_or("llama");
        let is_qwen2 = matches!(model_type, "qwen2" | "qwen2_moe");
        // Some configs write 0 for "no window".
        let window = c.opt_usize("sliding_window")?.filter(|&w| w > 0);
        let layer_types: Option<Vec<String>> = c
            .json
            .get("layer_types")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or("").to_string())
                    .collect()
            });
        let windows = (0..n_layers)
            .map(|i| match (&layer_types, window) {
                (_, None) => None,
                (Some(types), Some(w)) => {
                    (types.get(i).map(|t| t.as_str()) == Some("sliding_attention")).then_some(w)
                }
                // transformers 4.x Qwen2: windows only when enabled, from layer max_window_layers on.
                (None, Some(w)) if is_qwen2 => {
                    let from = c.opt_usize("max_window_layers").ok().flatten().unwrap_or(0);
                    (c.bool_or("use_sliding_window", false) && i >= from).then_some(w)
                }
                (None, Some(w)) => Some(w),
            })
            .collect();
        let act = Activation::parse(c.str("hidden_act").unwrap_or("silu"))?;
        let rope = Rope::from_hf_config(&c.json, head_dim, rope_style)?;
        let rms_norm_eps = c.f64_or("rms_norm_eps", 1e-6)? as f32;
        let qk_norm = match model_type {
            "qwen3" | "qwen3_moe" => Some(QkNorm::PerHead { eps: rms_norm_eps }),
            "olmoe" => Some(QkNorm::Whole { eps: rms_norm_eps }),
            _ => None,
        };
        if c.json.get("clip_qkv").is_some_and(|v| !v.is_null()) {
            return Err(c.bad("`clip_qkv` is not supported (only null)".into()));
        }
        let moe = MoeConfig::from_hf(c, n_layers)?;
        Ok(LlamaConfig {
            hidden,
            intermediate: c.usize("intermediate_size")?,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab: c.usize("vocab_size")?,
            rms_norm_eps,
            max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false),
            qkv_bias: is_qwen2 || c.bool_or("attention_bias", false),
            o_bias: !is_qwen2 && c.bool_or("attention_bias", false),
            mlp_bias: c.bool_or("mlp_bias", false),
            act,
            windows,
            rope,
            qk_norm,
            moe,
        })
    }

    /// The context length kiln accepts: the trained length, or more where a rope scaling
    /// extends it.
    pub fn max_context(&self) -> usize {
        match self.rope.scaling() {
            RopeScaling::None | RopeScaling::Llama3 { .. } | RopeScaling::Yarn { .. } => {
                self.max_position_embeddings
            }
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. } => {
                (self.max_position_embeddings as f32 * factor) as usize
            }
        }
    }
}

/// A block's feed-forward half: the dense gated MLP or the mixture of experts.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per layer, never moved on a hot path
enum Ffn {
    Dense(GatedMlp),
    Sparse(Moe),
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Ffn::Dense(m) => m.forward(x)?,
            Ffn::Sparse(m) => m.forward(x)?,
        })
    }
}

#[derive(Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Ffn,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let h = x.add(&self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            batch,
            layer,
            kv,
        )?)?;
        Ok(h.add(
            &self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?,
        )?)
    }
}

#[derive(Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    pub cfg: LlamaConfig,
}

impl Llama {
    pub fn load(
        w: &Weights,
        cfg: LlamaConfig,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Llama> {
        let m = w.pp("model");
        let embed_tokens = Embedding::load(&m, "embed_tokens.weight", cfg.vocab, cfg.hidden)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = m.pp("layers").pp(i);
            let spec = AttentionSpec {
                hidden: cfg.hidden,
                n_heads: cfg.n_heads,
                n_kv_heads: cfg.n_kv_heads,
                head_dim: cfg.head_dim,
                qkv_bias: cfg.qkv_bias,
                o_bias: cfg.o_bias,
                causal: true,
                window: cfg.windows[i],
                rope: Some(cfg.rope.clone()),
                alibi: None,
                qk_norm: cfg.qk_norm,
            };
            let sparse = cfg.moe.as_ref().filter(|m| m.sparse[i]);
            let mlp = match sparse {
                None => Ffn::Dense(GatedMlp::load(
                    &l.pp("mlp"),
                    cfg.hidden,
                    cfg.intermediate,
                    cfg.act,
                    cfg.mlp_bias,
                )?),
                Some(m) => {
                    // Mixtral's 4.x-era checkpoints name the block `block_sparse_moe`.
                    let name = if l.contains("block_sparse_moe.gate.weight") {
                        "block_sparse_moe"
                    } else {
                        "mlp"
                    };
                    Ffn::Sparse(Moe::load(&l.pp(name), m.spec(cfg.hidden, cfg.act))?)
                }
            };
            layers.push(Block {
                input_layernorm: RmsNorm::load(
                    &l,
                    "input_layernorm",
                    cfg.hidden,
                    cfg.rms_norm_eps,
                )?,
                self_attn: Attention::load(&l.pp("self_attn"), spec)?,
                post_attention_layernorm: RmsNorm::load(
                    &l,
                    "post_attention_layernorm",
                    cfg.hidden,
                    cfg.rms_norm_eps,
                )?,
                mlp,
            });
            on_layer(i + 1, cfg.n_layers);
        }
        let norm = RmsNorm::load(&m, "norm", cfg.hidden, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            Linear::tied(embed_tokens.table().clone())
        } else {
            Linear::load(w, "lm_head", cfg.hidden, cfg.vocab, false)?
        };
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cfg,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layers, self.cfg.n_kv_heads * self.cfg.head_dim)
    }

    /// Final-normed hidden states `(n_tokens, hidden)` of a packed step. With `trace`, also the
    /// embedding output and every block's output (before the final norm), for layer-by-layer tests.
    pub fn forward(
        &self,
        tokens: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let x = self.embed_tokens.forward(tokens)?;
        let x = crate::stack::run(x, self.layers.len(), batch, kv, trace, |i, x, kv| {
            self.layers[i].forward(x, batch, i, kv)
        })?;
        Ok(self.norm.forward(&x)?)
    }

    /// The routers' statistics since the last reset; `None` for a dense model.
    pub fn moe_stats(&self) -> Option<MoeReport> {
        let moe = self.cfg.moe.as_ref()?;
        let layers = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match &b.mlp {
                Ffn::Sparse(m) => Some((i, m.stats())),
                Ffn::Dense(_) => None,
            })
            .collect::<Vec<(usize, RouterStats)>>();
        Some(MoeReport {
            layers,
            router_aux_loss_coef: moe.router_aux_loss_coef,
        })
    }

    pub fn reset_moe_stats(&self) {
        for b in &self.layers {
            if let Ffn::Sparse(m) = &b.mlp {
                m.reset_stats();
            }
        }
    }

    /// Logits `(n_rows, vocab)` for rows of final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }
}
