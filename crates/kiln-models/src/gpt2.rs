//! GPT-2 (GPT2LMHeadModel, and the headless GPT2Model checkpoint layout).
//!
//! Reference: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners";
//! transformers `models/gpt2/modeling_gpt2.py`. Embeddings are token + learned absolute position
//! (`wte` + `wpe`); each block is pre-LayerNorm, `h = x + attn(ln_1(x)); out = h + mlp(ln_2(h))`,
//! with a GELU (tanh approximation, `gelu_new`) MLP, biases on every projection, and a final
//! `ln_f`. The LM head is tied to `wte`.
//!
//! Deviations at load time only: the checkpoint's `Conv1D` weights are stored `(in, out)` and
//! `c_attn` fuses q | k | v; both are transposed and split once (kiln-nn `fused`), so attention
//! is the shared layer. GGUF files (llama.cpp's `gpt2` names) hold the same tensors already
//! transposed to `(out, in)`, so only the split remains there. Keys are read under `transformer.` when present (GPT2LMHeadModel) or at
//! the root (GPT2Model). Unsupported variants (`scale_attn_by_inverse_layer_idx`, unscaled
//! attention, cross-attention) are config errors rather than silently wrong outputs.

use kiln_nn::fused::{load_conv1d, load_conv1d_qkv};
use kiln_nn::{
    Activation, Attention, AttentionSpec, Batch, Embedding, KvCache, KvStore, LayerNorm, Linear,
    Mlp, Weights,
};
use kiln_tensor::Tensor;

use crate::config::HfConfig;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Gpt2Config {
    pub hidden: usize,
    pub intermediate: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub vocab: usize,
    /// Rows of the learned position table: the longest context.
    pub n_positions: usize,
    pub layer_norm_eps: f32,
    pub act: Activation,
    pub tie_word_embeddings: bool,
}

impl Gpt2Config {
    pub fn from_hf(c: &HfConfig) -> Result<Gpt2Config> {
        let bad = |reason: String| Error::BadConfig {
            path: c.origin.clone(),
            reason,
        };
        for (key, supported) in [
            ("scale_attn_weights", true),
            ("scale_attn_by_inverse_layer_idx", false),
            ("add_cross_attention", false),
        ] {
            if c.bool_or(key, supported) != supported {
                return Err(bad(format!(
                    "GPT-2 with `{key}` = {} is not supported",
                    !supported
                )));
            }
        }
        let hidden = match c.opt_usize("n_embd")? {
            Some(h) => h,
            None => c.usize("hidden_size")?,
        };
        let n_heads = c.usize("n_head")?;
        if n_heads == 0 || hidden % n_heads != 0 {
            return Err(bad(format!(
                "n_embd {hidden} is not a multiple of n_head {n_heads}"
            )));
        }
        Ok(Gpt2Config {
            hidden,
            intermediate: c.opt_usize("n_inner")?.unwrap_or(4 * hidden),
            n_layers: c.usize("n_layer")?,
            n_heads,
            vocab: c.usize("vocab_size")?,
            n_positions: c.opt_usize("n_positions")?.unwrap_or(1024),
            layer_norm_eps: c.f64_or("layer_norm_epsilon", 1e-5)? as f32,
            act: Activation::parse(c.str("activation_function").unwrap_or("gelu_new"))?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads
    }
}

#[derive(Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(w: &Weights, cfg: &Gpt2Config) -> Result<Block> {
        let (h, eps) = (cfg.hidden, cfg.layer_norm_eps);
        let spec = AttentionSpec {
            hidden: h,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_heads,
            head_dim: cfg.head_dim(),
            qkv_bias: true,
            o_bias: true,
            causal: true,
            window: None,
            rope: None,
            alibi: None,
            qk_norm: None,
        };
        let a = w.pp("attn");
        let [q, k, v] = load_conv1d_qkv(&a, "c_attn", h, h)?;
        let m = w.pp("mlp");
        Ok(Block {
            ln_1: LayerNorm::load(w, "ln_1", h, eps, true)?,
            attn: Attention::from_parts(q, k, v, projection(&a, "c_proj", h, h)?, spec),
            ln_2: LayerNorm::load(w, "ln_2", h, eps, true)?,
            mlp: Mlp::from_parts(
                projection(&m, "c_fc", h, cfg.intermediate)?,
                projection(&m, "c_proj", cfg.intermediate, h)?,
                cfg.act,
            ),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let h = x.add(
            &self
                .attn
                .forward(&self.ln_1.forward(x)?, batch, layer, kv)?,
        )?;
        Ok(h.add(&self.mlp.forward(&self.ln_2.forward(&h)?)?)?)
    }
}

/// A Conv1D projection with bias (kiln-nn `fused` reads it from either file format).
fn projection(w: &Weights, name: &str, in_features: usize, out_features: usize) -> Result<Linear> {
    Ok(load_conv1d(w, name, in_features, out_features, true)?)
}

#[derive(Clone)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    pub cfg: Gpt2Config,
}

impl Gpt2 {
    pub fn load(
        w: &Weights,
        cfg: Gpt2Config,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Gpt2> {
        let t = if w.contains("transformer.wte.weight") {
            w.pp("transformer")
        } else {
            w.clone()
        };
        let wte = Embedding::load(&t, "wte.weight", cfg.vocab, cfg.hidden)?;
        let wpe = Embedding::load(&t, "wpe.weight", cfg.n_positions, cfg.hidden)?;
        let mut h = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            h.push(Block::load(&t.pp("h").pp(i), &cfg)?);
            on_layer(i + 1, cfg.n_layers);
        }
        let ln_f = LayerNorm::load(&t, "ln_f", cfg.hidden, cfg.layer_norm_eps, true)?;
        // GPT-2 ties the head to `wte` (transformers saves no `lm_head.weight`; older files carry
        // a copy of `wte`). Only a config that unties it reads a stored head.
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            Linear::load(w, "lm_head", cfg.hidden, cfg.vocab, false)?
        } else {
            Linear::tied(wte.table().clone())
        };
        Ok(Gpt2 {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            cfg,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layers, self.cfg.hidden)
    }

    /// Final-normed hidden states `(n_tokens, hidden)` of a packed step. With `trace`, also the
    /// embedding output and every block's output (before `ln_f`).
    pub fn forward(
        &self,
        tokens: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        if let Some(&p) = batch.positions.iter().find(|&&p| p >= self.cfg.n_positions) {
            return Err(Error::InputTooLong {
                n_tokens: p + 1,
                max_tokens: self.cfg.n_positions,
            });
        }
        let positions: Vec<u32> = batch.positions.iter().map(|&p| p as u32).collect();
        let x = self
            .wte
            .forward(tokens)?
            .add(&self.wpe.forward(&positions)?)?;
        let x = crate::stack::run(x, self.h.len(), batch, kv, trace, |i, x, kv| {
            self.h[i].forward(x, batch, i, kv)
        })?;
        Ok(self.ln_f.forward(&x)?)
    }

    /// Logits `(n_rows, vocab)` for rows of final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }
}
