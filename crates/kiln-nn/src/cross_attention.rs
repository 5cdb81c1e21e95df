//! Encoder-decoder (cross) attention: decoder queries attend to the encoder's output.
//!
//! Reference: Vaswani et al. 2017, section 3.2.3; transformers `T5Attention` with
//! `is_cross_attention` / `BartAttention` with `key_value_states`. The keys and values depend only
//! on the encoder output, so [`CrossAttention::memory`] computes them once per request
//! ([`CrossKv`], tensors on the model's device) and every decode step — and every beam of a beam
//! search, through a shared reference — reads them without recomputing or copying. No causal
//! mask and no positions: every query sees every source token.
//!
//! A step's sequences are cut into runs that share one memory (the beams of a request; a lone
//! request); each run is one [`Tensor::attention`] over that memory as packed rows. The runs and
//! their metadata ([`CrossStep`]) are built once per step by the decoder stack and read by every
//! layer.

use kiln_tensor::{AttnArgs, AttnMeta, Device, HostMeta, KvLayout, Tensor};

use crate::{Batch, Linear, Result};

/// One layer's cross-attention keys and values for one source: `(n_src, n_heads · head_dim)` each.
#[derive(Debug, Clone)]
pub struct CrossKv {
    k: Tensor,
    v: Tensor,
}

impl CrossKv {
    /// Source positions held.
    pub fn len(&self) -> usize {
        self.k.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.k
            .dtype()
            .bytes_for(self.k.elem_count() + self.v.elem_count())
    }
}

/// A step's cross-attention layout: consecutive sequences that read the same memory form a
/// run; the metadata of every row is uploaded once per step and each run reads its slice.
#[derive(Debug, Clone)]
pub struct CrossStep {
    /// (first row, rows, first sequence, sequences) of each run.
    runs: Vec<(usize, usize, usize, usize)>,
    meta: AttnMeta,
}

impl CrossStep {
    /// `sources[i]` = (an id of sequence `i`'s memory, its source length); sequences with equal
    /// ids share one memory.
    pub fn new(batch: &Batch, sources: &[(usize, usize)], device: Device) -> Result<CrossStep> {
        if sources.len() != batch.seqs.len() {
            return Err(crate::Error::Config(format!(
                "cross attention: {} encoder memories for {} sequences",
                sources.len(),
                batch.seqs.len()
            )));
        }
        let mut runs: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut host = HostMeta::default();
        for (i, (span, &(id, n_src))) in batch.seqs.iter().zip(sources).enumerate() {
            match runs.last_mut() {
                Some((r0, rows, first, n))
                    if sources[*first].0 == id && *r0 + *rows == span.start =>
                {
                    *rows += span.len;
                    *n += 1;
                }
                _ => runs.push((span.start, span.len, i, 1)),
            }
            let first = runs.last().expect("pushed above").2;
            // Within a run, every row reads sequence `i`'s entry: the run's one memory.
            host.tok_seq
                .extend(std::iter::repeat_n((i - first) as u32, span.len));
            host.tok_pos.extend(
                batch.positions[span.start..span.start + span.len]
                    .iter()
                    .map(|&p| p as u32),
            );
            host.seq_len.push(n_src as u32);
            host.tables.push(vec![0]);
        }
        // `tok_seq` counts from each run's first sequence: a run reads its own slice of the
        // lengths and tables (`narrow` in `forward`).
        Ok(CrossStep {
            runs,
            meta: host.upload(device)?,
        })
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
        let [k, v] = Linear::forward_many([&self.k_proj, &self.v_proj], encoder_out)?;
        Ok(CrossKv { k, v })
    }

    /// `x (n_tokens, hidden) -> (n_tokens, hidden)`: sequence `i` of the step attends to
    /// `memory[i]`, its own source.
    pub fn forward(&self, x: &Tensor, step: &CrossStep, memory: &[&CrossKv]) -> Result<Tensor> {
        let n = x.dims2("cross attention")?.0;
        let q = self.q_proj.forward(x)?; // (n_tokens, n_heads · head_dim)
        let mut outs = Vec::with_capacity(step.runs.len());
        for &(r0, rows, first, n_seqs) in &step.runs {
            let mem = memory.get(first).ok_or_else(|| {
                crate::Error::Config(format!(
                    "cross attention: no encoder memory for sequence {first}"
                ))
            })?;
            let meta = AttnMeta {
                tok_seq: step.meta.tok_seq.narrow(0, r0, rows)?,
                tok_pos: step.meta.tok_pos.narrow(0, r0, rows)?,
                seq_len: step.meta.seq_len.narrow(0, first, n_seqs)?,
                block_tables: step.meta.block_tables.narrow(0, first, n_seqs)?,
            };
            let q_run = if step.runs.len() == 1 && rows == n {
                q.clone()
            } else {
                q.narrow(0, r0, rows)?
            };
            outs.push(Tensor::attention(&AttnArgs {
                q: &q_run,
                k: &mem.k,
                v: &mem.v,
                layout: KvLayout::rows(self.n_heads, self.head_dim),
                meta: &meta,
                n_heads: self.n_heads,
                n_kv_heads: self.n_heads,
                head_dim: self.head_dim,
                scale: self.scale,
                causal: false,
                window: None,
                alibi: None,
                rel_bias: None,
            })?);
        }
        let out = match outs.len() {
            1 => outs.pop().expect("one run"),
            _ => Tensor::cat_rows(&outs)?,
        };
        self.o_proj.forward(&out)
    }
}
