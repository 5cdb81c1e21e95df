//! BLOOM (BloomForCausalLM, and the headless BloomModel checkpoint layout).
//!
//! Reference: BigScience, "BLOOM: A 176B-Parameter Open-Access Multilingual Language Model"
//! (2022); transformers `models/bloom/modeling_bloom.py`. No position embeddings: attention
//! scores get ALiBi distance penalties (kiln-nn `Alibi`, slopes for any head count). Token
//! embeddings pass through `word_embeddings_layernorm`; each block is pre-LayerNorm,
//! `h = r1 + attn(ln_in(x)); out = r2 + mlp(ln_post(h))`, where the residuals are the raw inputs
//! (`r1 = x`, `r2 = h`) or, with `apply_residual_connection_post_layernorm`, the normed ones.
//! The MLP is `dense_4h_to_h(gelu(dense_h_to_4h(.)))` with BLOOM's tanh-approximated GELU; the
//! LM head is tied to `word_embeddings`.
//!
//! Deviation at load time only: the fused `query_key_value` rows are laid out per head,
//! `(n_head, 3, head_dim)`, and are split once into q, k, v projections (kiln-nn `fused`).
//! GGUF files (llama.cpp's `bloom` names) hold them regrouped as q | k | v.
//!
//! Context length: ALiBi needs no table of positions, so nothing breaks past the training
//! length; Press et al. (2021) show perplexity stays flat far beyond it (the penalty makes distant
//! keys negligible). The bound is the KV cache's memory, so [`BloomConfig::max_context`] allows
//! `CONTEXT_FACTOR` times the training length (`seq_length` when the config states it, else
//! BLOOM's 2048), rather than an unbounded limit that would let a request exhaust memory.

use kiln_nn::fused::load_per_head_qkv;
use kiln_nn::{
    Activation, Alibi, Attention, AttentionSpec, Batch, Embedding, KvCache, KvStore, LayerNorm,
    Linear, Mlp, Weights,
};
use kiln_tensor::Tensor;

use crate::config::HfConfig;
use crate::{Error, Result};

/// BLOOM's training sequence length (all sizes), used when a config does not state one.
const BLOOM_TRAINING_LENGTH: usize = 2048;
/// How many times the training length kiln accepts (see the module doc).
const CONTEXT_FACTOR: usize = 4;

#[derive(Debug, Clone)]
pub struct BloomConfig {
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub vocab: usize,
    pub layer_norm_eps: f32,
    pub residual_post_layernorm: bool,
    pub tie_word_embeddings: bool,
    /// The longest sequence the model was trained on.
    pub training_length: usize,
}

impl BloomConfig {
    pub fn from_hf(c: &HfConfig) -> Result<BloomConfig> {
        let hidden = match c.opt_usize("hidden_size")? {
            Some(h) => h,
            None => c.usize("n_embed")?,
        };
        let n_heads = c.usize("n_head")?;
        if n_heads == 0 || hidden % n_heads != 0 {
            return Err(Error::BadConfig {
                path: c.origin.clone(),
                reason: format!("hidden_size {hidden} is not a multiple of n_head {n_heads}"),
            });
        }
        Ok(BloomConfig {
            hidden,
            n_layers: c.usize("n_layer")?,
            n_heads,
            vocab: c.usize("vocab_size")?,
            layer_norm_eps: c.f64_or("layer_norm_epsilon", 1e-5)? as f32,
            residual_post_layernorm: c.bool_or("apply_residual_connection_post_layernorm", false),
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true),
            training_length: c.opt_usize("seq_length")?.unwrap_or(BLOOM_TRAINING_LENGTH),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads
    }

    /// The context length kiln accepts: a multiple of the training length (ALiBi extrapolates).
    pub fn max_context(&self) -> usize {
        CONTEXT_FACTOR * self.training_length
    }
}

#[derive(Clone)]
struct Block {
    input_layernorm: LayerNorm,
    self_attention: Attention,
    post_attention_layernorm: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(w: &Weights, cfg: &BloomConfig) -> Result<Block> {
        let (h, eps, head_dim) = (cfg.hidden, cfg.layer_norm_eps, cfg.head_dim());
        let spec = AttentionSpec {
            hidden: h,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_heads,
            head_dim,
            qkv_bias: true,
            o_bias: true,
            causal: true,
            window: None,
            rope: None,
            alibi: Some(Alibi::new(cfg.n_heads)),
            qk_norm: None,
        };
        let a = w.pp("self_attention");
        let [q, k, v] = load_per_head_qkv(&a, "query_key_value", h, cfg.n_heads, head_dim)?;
        let dense = Linear::load(&a, "dense", h, h, true)?;
        let m = w.pp("mlp");
        Ok(Block {
            input_layernorm: LayerNorm::load(w, "input_layernorm", h, eps, true)?,
            self_attention: Attention::from_parts(q, k, v, dense, spec),
            post_attention_layernorm: LayerNorm::load(w, "post_attention_layernorm", h, eps, true)?,
            mlp: Mlp::from_parts(
                Linear::load(&m, "dense_h_to_4h", h, 4 * h, true)?,
                Linear::load(&m, "dense_4h_to_h", 4 * h, h, true)?,
                Activation::GeluTanh,
            ),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        kv: &mut dyn KvStore,
        residual_post_layernorm: bool,
    ) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(x)?;
        let residual = if residual_post_layernorm { &normed } else { x };
        let h = residual.add(&self.self_attention.forward(&normed, batch, layer, kv)?)?;
        let normed = self.post_attention_layernorm.forward(&h)?;
        let residual = if residual_post_layernorm { &normed } else { &h };
        Ok(residual.add(&self.mlp.forward(&normed)?)?)
    }
}

#[derive(Clone)]
pub struct Bloom {
    word_embeddings: Embedding,
    word_embeddings_layernorm: LayerNorm,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    pub cfg: BloomConfig,
}

impl Bloom {
    pub fn load(
        w: &Weights,
        cfg: BloomConfig,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Bloom> {
        let t = if w.contains("transformer.word_embeddings.weight") {
            w.pp("transformer")
        } else {
            w.clone()
        };
        let (h, eps) = (cfg.hidden, cfg.layer_norm_eps);
        let word_embeddings = Embedding::load(&t, "word_embeddings.weight", cfg.vocab, h)?;
        let word_embeddings_layernorm =
            LayerNorm::load(&t, "word_embeddings_layernorm", h, eps, true)?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            blocks.push(Block::load(&t.pp("h").pp(i), &cfg)?);
            on_layer(i + 1, cfg.n_layers);
        }
        let ln_f = LayerNorm::load(&t, "ln_f", h, eps, true)?;
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            Linear::load(w, "lm_head", h, cfg.vocab, false)?
        } else {
            Linear::tied(word_embeddings.table().clone())
        };
        Ok(Bloom {
            word_embeddings,
            word_embeddings_layernorm,
            h: blocks,
            ln_f,
            lm_head,
            cfg,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layers, self.cfg.hidden)
    }

    /// Final-normed hidden states `(n_tokens, hidden)` of a packed step. With `trace`, also the
    /// normed embeddings and every block's output (before `ln_f`).
    pub fn forward(
        &self,
        tokens: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let x = self
            .word_embeddings_layernorm
            .forward(&self.word_embeddings.forward(tokens)?)?;
        let post_ln = self.cfg.residual_post_layernorm;
        let x = crate::stack::run(x, self.h.len(), batch, kv, trace, |i, x, kv| {
            self.h[i].forward(x, batch, i, kv, post_ln)
        })?;
        Ok(self.ln_f.forward(&x)?)
    }

    /// Logits `(n_rows, vocab)` for rows of final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }
}
