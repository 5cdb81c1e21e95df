//! Multi-head attention as one layer configured by an [`AttentionSpec`]: projections, rotary
//! positions, ALiBi, KV-cache writes and the kernel call all live here, so a model's block reads
//! `x + attn(norm(x))` whatever the head layout, window or cache.
//!
//! Inputs are flat: a step's tokens from several sequences packed as `(n_tokens, hidden)`, with a
//! [`Batch`] saying which rows belong to which sequence and at which positions. Each sequence
//! appends its new keys/values to the [`KvStore`] and attends over everything cached there.

use kiln_tensor::host_kv::AttnParams;
use kiln_tensor::{AttnArgs, KvLayout, Tensor};

use crate::weights::Weights;
use crate::{Alibi, Batch, KvStore, Linear, PositionBias, Result, RmsNorm, Rope};

#[derive(Debug, Clone)]
pub struct AttentionSpec {
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Biases on the q/k/v projections (Qwen2) and on the output projection.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub causal: bool,
    /// Sliding window (Mistral): a query sees its own position and the `window - 1` before it.
    pub window: Option<usize>,
    pub rope: Option<Rope>,
    /// ALiBi distance penalties (BLOOM), in place of position embeddings.
    pub alibi: Option<Alibi>,
    /// RMSNorm of queries and keys before the rotary embedding (`q_norm`, `k_norm`).
    pub qk_norm: Option<QkNorm>,
}

/// Where the query/key RMSNorm applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QkNorm {
    /// Over each head's `head_dim` values, one weight of `head_dim` shared by the heads (Qwen3).
    PerHead { eps: f32 },
    /// Over the whole projection, `n_heads · head_dim` values (OLMoE).
    Whole { eps: f32 },
}

#[derive(Clone)]
struct QkNorms {
    q: RmsNorm,
    k: RmsNorm,
    per_head: bool,
}

#[derive(Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    qk_norm: Option<QkNorms>,
    spec: AttentionSpec,
    /// Score scale, 1/sqrt(head_dim) unless [`Attention::with_scale`] says otherwise.
    scale: f32,
}

impl Attention {
    /// Scores scaled by `scale` instead of 1/sqrt(head_dim) (T5 uses 1: its initialisation
    /// already accounts for it).
    pub fn with_scale(mut self, scale: f32) -> Attention {
        self.scale = scale;
        self
    }

    /// Loads `q_proj`, `k_proj`, `v_proj`, `o_proj` under `w`.
    pub fn load(w: &Weights, spec: AttentionSpec) -> Result<Attention> {
        let (h, q, kv) = (
            spec.hidden,
            spec.n_heads * spec.head_dim,
            spec.n_kv_heads * spec.head_dim,
        );
        let qk_norm = match spec.qk_norm {
            None => None,
            Some(QkNorm::PerHead { eps }) => Some(QkNorms {
                q: RmsNorm::load(w, "q_norm", spec.head_dim, eps)?,
                k: RmsNorm::load(w, "k_norm", spec.head_dim, eps)?,
                per_head: true,
            }),
            Some(QkNorm::Whole { eps }) => Some(QkNorms {
                q: RmsNorm::load(w, "q_norm", q, eps)?,
                k: RmsNorm::load(w, "k_norm", kv, eps)?,
                per_head: false,
            }),
        };
        Ok(Attention {
            qk_norm,
            q_proj: Linear::load(w, "q_proj", h, q, spec.qkv_bias)?,
            k_proj: Linear::load(w, "k_proj", h, kv, spec.qkv_bias)?,
            v_proj: Linear::load(w, "v_proj", h, kv, spec.qkv_bias)?,
            o_proj: Linear::load(w, "o_proj", q, h, spec.o_bias)?,
            scale: 1.0 / (spec.head_dim as f32).sqrt(),
            spec,
        })
    }

    /// `x (n_tokens, hidden) -> (n_tokens, hidden)`; appends this step's keys/values to layer
    /// `layer` of each sequence in `kv` (the model calls `kv.advance` after the last layer).
    pub fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        self.forward_biased(x, batch, layer, kv, None)
    }

    /// [`Attention::forward`] with an additive relative position bias on the scores (T5); the
    /// table must cover every distance the batch meets (see `RelativePositionBias::table`).
    pub fn forward_biased(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        kv: &mut dyn KvStore,
        bias: Option<&PositionBias>,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let [q, k, v] = Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        // q (n_tokens, n_heads · head_dim); k, v (n_tokens, n_kv_heads · head_dim)
        let (q, k) = self.norm_qk(q, k)?;
        let (q, k) = match &s.rope {
            Some(rope) => (
                rope.forward(q, s.n_heads, batch)?,
                rope.forward(k, s.n_kv_heads, batch)?,
            ),
            None => (q, k),
        };
        let params = AttnParams {
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            scale: self.scale,
            causal: s.causal,
            window: s.window,
            alibi_slopes: s.alibi.as_ref().map(|a| a.slopes()),
            rel_bias: bias.map(|b| b.as_kernel()),
        };
        let out = kv.append_attend_all(layer, batch, &q, &k, &v, &params)?;
        self.o_proj.forward(&out)
    }

    /// The query/key RMSNorm of the spec, if any.
    fn norm_qk(&self, q: Tensor, k: Tensor) -> Result<(Tensor, Tensor)> {
        let Some(n) = &self.qk_norm else {
            return Ok((q, k));
        };
        if !n.per_head {
            return Ok((n.q.forward(&q)?, n.k.forward(&k)?));
        }
        let d = self.spec.head_dim;
        let per_head = |norm: &RmsNorm, t: &Tensor| -> Result<Tensor> {
            let dims = t.dims().to_vec();
            // (n_tokens · heads, head_dim)
            let rows = norm.forward(&t.reshape([t.elem_count() / d, d])?)?;
            Ok(rows.reshape(dims)?)
        };
        Ok((per_head(&n.q, &q)?, per_head(&n.k, &k)?))
    }

    /// An attention layer from projections loaded under other names (BERT's `query`/`key`/
    /// `value`/`output.dense`, DistilBERT's `q_lin`/.../`out_lin`).
    pub fn from_parts(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        spec: AttentionSpec,
    ) -> Attention {
        Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            qk_norm: None,
            scale: 1.0 / (spec.head_dim as f32).sqrt(),
            spec,
        }
    }

    /// Bidirectional self-attention without a cache, for encoders: each sequence of `batch`
    /// attends to all of its own rows and nothing else, plus `bias` (T5's relative positions)
    /// when given. `x (n_tokens, hidden) -> (n_tokens, hidden)` on any device: one
    /// [`Tensor::attention`] over the step's own keys as packed rows, with the metadata
    /// [`Batch::encoder_meta`] uploads once per step. Rotary positions are applied when the spec
    /// has them.
    pub fn forward_encoder(
        &self,
        x: &Tensor,
        batch: &Batch,
        bias: Option<&PositionBias>,
    ) -> Result<Tensor> {
        let s = &self.spec;
        if s.causal || s.window.is_some() {
            return Err(crate::Error::Config(
                "encoder attention is bidirectional: a causal or windowed spec needs a KV store"
                    .into(),
            ));
        }
        let device = x.device();
        let [q, k, v] = Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        let (q, k) = self.norm_qk(q, k)?;
        let (q, k) = match &s.rope {
            Some(rope) => (
                rope.forward(q, s.n_heads, batch)?,
                rope.forward(k, s.n_kv_heads, batch)?,
            ),
            None => (q, k),
        };
        let meta = batch.encoder_meta(device)?;
        let slopes = match &s.alibi {
            Some(a) => Some(Tensor::from_vec(a.slopes().to_vec(), [s.n_heads])?.to_device(device)?),
            None => None,
        };
        let rel = match bias {
            Some(b) => Some(b.values_on(device)?),
            None => None,
        };
        let out = Tensor::attention(&AttnArgs {
            q: &q,
            k: &k,
            v: &v,
            layout: KvLayout::rows(s.n_kv_heads, s.head_dim),
            meta: &meta,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            scale: self.scale,
            causal: false,
            window: None,
            alibi: slopes.as_ref(),
            rel_bias: bias.zip(rel.as_ref()).map(|(b, t)| b.args(t)),
        })?;
        self.o_proj.forward(&out)
    }
}
