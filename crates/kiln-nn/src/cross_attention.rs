//! Encoder-decoder (cross) attention: decoder queries attend to the encoder's output.
//!
//! Reference: Vaswani et al. 2017, section 3.2.3; transformers `T5Attention` with
//! `is_cross_attention` / `BartAttention` with `key_value_states`. The keys and values depend only
//! on the encoder output, so [`CrossAttention::memory`] computes them once per request
//! ([`CrossKv`]) and every decode step — and every beam of a beam search, through a shared
//! reference — reads them without recomputing or copying. No causal mask and no positions: every
//! query sees every source token.

use kiln_tensor::cpu::attention::{attention, AttnParams};
use kiln_tensor::Tensor;

use crate::{Batch, Linear, Result};

/// One layer's cross-attention keys and values for one source: `(n_src, n_heads, head_dim)` each.
#[derive(Debug, Clone)]
pub struct CrossKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl CrossKv {
    /// Source positions held.
    pub fn len(&self, row: usize) -> usize {
        self.k.len() / row.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }
}

#[derive(Clone)]
pub struct CrossAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    head_dim: usize,
    /// Score scale: 1/sqrt(head_dim) (BART), or 1 (T5 folds it into the initialisation).
    scale: f32,
}

impl CrossAttention {
    /// From projections loaded under the checkpoint's names (T5 `q`/`k`/`v`/`o`, BART
    /// `q_proj`/.../`out_proj`).
    pub fn from_parts(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        n_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> CrossAttention {
        CrossAttention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            n_heads,
            head_dim,
            scale,
        }
    }

    /// Keys and values of the encoder output `(n_src, hidden)`, computed once per request.
    pub fn memory(&self, encoder_out: &Tensor) -> Result<CrossKv> {
        Ok(CrossKv {
            k: self.k_proj.forward(encoder_out)?.into_f32_vec(),
            v: self.v_proj.forward(encoder_out)?.into_f32_vec(),
        })
    }

    /// `x (n_tokens, hidden) -> (n_tokens, hidden)`: sequence `i` of `batch` attends to
    /// `memory[i]`, its own source.
    pub fn forward(&self, x: &Tensor, batch: &Batch, memory: &[&CrossKv]) -> Result<Tensor> {
        assert_eq!(
            memory.len(),
            batch.seqs.len(),
            "cross attention: one encoder memory per sequence"
        );
        let n = batch.n_tokens();
        let row = self.n_heads * self.head_dim;
        let q = self.q_proj.forward(x)?.into_f32_vec(); // (n_tokens, n_heads, head_dim)
        let params = AttnParams {
            n_heads: self.n_heads,
            n_kv_heads: self.n_heads,
            head_dim: self.head_dim,
            scale: self.scale,
            causal: false,
            window: None,
            alibi_slopes: None,
            rel_bias: None,
        };
        let mut out = vec![0.0f32; n * row];
        for (span, mem) in batch.seqs.iter().zip(memory) {
            let rows = span.start * row..(span.start + span.len) * row;
            attention(&q[rows.clone()], &mem.k, &mem.v, 0, &params, &mut out[rows]);
        }
        self.o_proj.forward(&Tensor::from_vec(out, [n, row])?)
    }
}
