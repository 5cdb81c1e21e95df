//! Multi-head attention as one layer configured by an [`AttentionSpec`]: projections, rotary
//! positions, ALiBi, KV-cache writes and the kernel call all live here, so a model's block reads
//! `x + attn(norm(x))` whatever the head layout, window or cache.
//!
//! Inputs are flat: a step's tokens from several sequences packed as `(n_tokens, hidden)`, with a
//! [`Batch`] saying which rows belong to which sequence and at which positions. Each sequence
//! appends its new keys/values to the [`KvStore`] and attends over everything cached there.

use kiln_tensor::cpu::attention::AttnParams;
use kiln_tensor::Tensor;

use crate::weights::Weights;
use crate::{Alibi, Batch, KvStore, Linear, PositionBias, Result, Rope};

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
}

#[derive(Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
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
        Ok(Attention {
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
            scale: 1.0 / (spec.head_dim as f32).sqrt(),
            spec,
        }
    }

    /// Bidirectional self-attention without a cache, for encoders: each sequence of `batch`
    /// attends to all of its own rows and nothing else. Works on caller-owned buffers:
    /// `x (n_tokens, hidden)`, scratch `q`, `k`, `v`, `ctx` (each n_tokens * n_heads * head_dim)
    /// and `out (n_tokens, hidden)`. Rotary positions are applied when the spec has them.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_packed(
        &self,
        x: &[f32],
        batch: &Batch,
        q: &mut [f32],
        k: &mut [f32],
        v: &mut [f32],
        ctx: &mut [f32],
        out: &mut [f32],
    ) -> Result<()> {
        let s = &self.spec;
        assert!(
            !s.causal && s.n_kv_heads == s.n_heads && s.window.is_none() && s.alibi.is_none(),
            "forward_packed: bidirectional MHA without ALiBi only"
        );
        let n = batch.n_tokens();
        let row = s.n_heads * s.head_dim;
        let (q, k, v, ctx) = (
            &mut q[..n * row],
            &mut k[..n * row],
            &mut v[..n * row],
            &mut ctx[..n * row],
        );
        self.q_proj.forward_into(x, n, q)?; // (n_tokens, n_heads, head_dim)
        self.k_proj.forward_into(x, n, k)?;
        self.v_proj.forward_into(x, n, v)?;
        if let Some(rope) = &s.rope {
            rope.apply(q, s.n_heads, s.head_dim, &batch.positions);
            rope.apply(k, s.n_kv_heads, s.head_dim, &batch.positions);
        }
        let spans: Vec<(usize, usize)> = batch.seqs.iter().map(|sp| (sp.start, sp.len)).collect();
        kiln_tensor::cpu::encoder::attention_varlen(
            q, k, v, &spans, s.n_heads, s.head_dim, self.scale, ctx,
        );
        self.o_proj.forward_into(ctx, n, out)
    }
}
