//! Encoder-decoder models behind one closed enum: T5 (t5.rs) and the BART family (bart.rs:
//! BART, mBART, Marian).
//!
//! The contract every family keeps: `encode` runs the encoder once over a source; `memory` turns
//! its output into every decoder layer's cross-attention keys/values ([`EncoderMemory`], computed
//! once per request and shared by reference — beams never copy it); `decode` runs packed decoder
//! tokens through the layers, appending self-attention keys/values to the caller's [`KvStore`];
//! `logits` applies the head. Generation (greedy in kiln-engine's seq2seq.rs, beam search) is
//! written once against [`Seq2Seq`].

use kiln_nn::{Batch, CrossAttention, CrossKv, CrossStep, KvCache, KvStore};
use kiln_tensor::Device;
use kiln_tensor::Tensor;

use crate::config::{ids, HfConfig};
use crate::{Bart, Error, Result, T5};

/// The encoder's output as the decoder reads it: cross-attention keys/values per decoder layer.
#[derive(Debug, Clone)]
pub struct EncoderMemory {
    pub(crate) layers: Vec<CrossKv>,
    n_src: usize,
}

impl EncoderMemory {
    /// Every decoder layer's cross-attention keys/values of `encoder_out`, in layer order.
    pub(crate) fn of<'a>(
        cross: impl Iterator<Item = &'a CrossAttention>,
        encoder_out: &Tensor,
    ) -> Result<EncoderMemory> {
        let layers = cross
            .map(|c| c.memory(encoder_out))
            .collect::<kiln_nn::Result<Vec<_>>>()?;
        Ok(EncoderMemory {
            layers,
            n_src: encoder_out.dims()[0],
        })
    }

    /// Source tokens the memory was computed from.
    pub fn n_src(&self) -> usize {
        self.n_src
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }

    /// The cross-attention layout of a step whose sequence `i` reads `memory[i]` (built once
    /// per step, read by every decoder layer).
    pub(crate) fn step(
        batch: &Batch,
        memory: &[&EncoderMemory],
        device: Device,
    ) -> Result<CrossStep> {
        let sources: Vec<(usize, usize)> = memory
            .iter()
            .map(|m| (*m as *const EncoderMemory as usize, m.n_src))
            .collect();
        Ok(CrossStep::new(batch, &sources, device)?)
    }

    /// Layer `i`'s keys/values for each sequence of a step.
    pub(crate) fn layer<'a>(memory: &[&'a EncoderMemory], i: usize) -> Vec<&'a CrossKv> {
        memory.iter().map(|m| &m.layers[i]).collect()
    }
}

/// A decoder block's inputs beyond the step: the KV store of its self-attention, the step's
/// cross-attention layout and each sequence's encoder memory.
pub(crate) struct Decoding<'k, 'm> {
    pub kv: &'k mut dyn KvStore,
    pub cross: &'m CrossStep,
    pub memory: &'m [&'m EncoderMemory],
}

/// Generation facts from config.json / generation_config.json.
#[derive(Debug, Clone)]
pub struct Seq2SeqInfo {
    pub architecture: String,
    pub vocab_size: usize,
    pub decoder_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
    /// Forced as the first generated token (transformers' `ForcedBOSTokenLogitsProcessor`).
    pub forced_bos_token_id: Option<u32>,
    /// Forced when one token of the length budget is left (`ForcedEOSTokenLogitsProcessor`).
    pub forced_eos_token_id: Option<u32>,
    /// Longest source the encoder numbers (`None`: relative positions, no hard limit).
    pub max_source_tokens: Option<usize>,
    /// Most decoder positions, the start token included (`None`: no hard limit).
    pub max_target_tokens: Option<usize>,
}

#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one model per process, boxed inside `Model`
pub enum Seq2Seq {
    T5(T5),
    Bart(Bart),
}

impl Seq2Seq {
    pub fn info(&self) -> &Seq2SeqInfo {
        match self {
            Seq2Seq::T5(m) => &m.info,
            Seq2Seq::Bart(m) => &m.info,
        }
    }

    /// Checks a source: not empty, within the encoder's positions, ids in the vocabulary.
    pub fn check_source(&self, src: &[u32]) -> Result<()> {
        let info = self.info();
        if src.is_empty() {
            return Err(Error::EmptySource);
        }
        if let Some(max) = info.max_source_tokens {
            if src.len() > max {
                return Err(Error::InputTooLong {
                    n_tokens: src.len(),
                    max_tokens: max,
                });
            }
        }
        check_ids(src, info.vocab_size)
    }

    /// The encoder's output `(n_src, hidden)`; with `trace`, also each layer's input and the last
    /// layer's raw output.
    pub fn encode(&self, src: &[u32], trace: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        self.check_source(src)?;
        match self {
            Seq2Seq::T5(m) => m.encode(src, trace),
            Seq2Seq::Bart(m) => m.encode(src, trace),
        }
    }

    /// Every decoder layer's cross-attention keys/values of an encoder output.
    pub fn memory(&self, encoder_out: &Tensor) -> Result<EncoderMemory> {
        match self {
            Seq2Seq::T5(m) => m.memory(encoder_out),
            Seq2Seq::Bart(m) => m.memory(encoder_out),
        }
    }

    /// `encode` then `memory`: what a request computes once.
    pub fn encode_memory(&self, src: &[u32]) -> Result<EncoderMemory> {
        let out = self.encode(src, None)?;
        self.memory(&out)
    }

    pub fn n_decoder_layers(&self) -> usize {
        match self {
            Seq2Seq::T5(m) => m.cfg.n_decoder_layers,
            Seq2Seq::Bart(m) => m.cfg.decoder_layers,
        }
    }

    /// The decoder self-attention cache's shape: `(n_layers, n_kv_heads, head_dim)` (to size a
    /// paged pool).
    pub fn kv_shape(&self) -> (usize, usize, usize) {
        match self {
            Seq2Seq::T5(m) => (m.cfg.n_decoder_layers, m.cfg.n_heads, m.cfg.d_kv),
            Seq2Seq::Bart(m) => (
                m.cfg.decoder_layers,
                m.cfg.decoder_heads,
                m.cfg.d_model / m.cfg.decoder_heads,
            ),
        }
    }

    /// An empty decoder self-attention cache.
    pub fn new_cache(&self) -> KvCache {
        match self {
            Seq2Seq::T5(m) => m.new_cache(),
            Seq2Seq::Bart(m) => m.new_cache(),
        }
    }

    /// Final decoder hidden states `(n_tokens, hidden)` of a packed step; sequence `i` of `batch`
    /// reads `memory[i]`. With `trace`, each layer's input and the last layer's raw output.
    pub fn decode(
        &self,
        tokens: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
        memory: &[&EncoderMemory],
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let info = self.info();
        check_ids(tokens, info.vocab_size)?;
        if let Some(max) = info.max_target_tokens {
            if let Some(&p) = batch.positions.iter().find(|&&p| p >= max) {
                return Err(Error::InputTooLong {
                    n_tokens: p + 1,
                    max_tokens: max,
                });
            }
        }
        match self {
            Seq2Seq::T5(m) => m.decode(tokens, batch, kv, memory, trace),
            Seq2Seq::Bart(m) => m.decode(tokens, batch, kv, memory, trace),
        }
    }

    /// Logits `(n_rows, vocab)` of final decoder hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Seq2Seq::T5(m) => m.logits(hidden),
            Seq2Seq::Bart(m) => m.logits(hidden),
        }
    }
}

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(&id) => Err(Error::TokenOutOfRange { id, vocab }),
        None => Ok(()),
    }
}

/// A token-id setting for generation: generation_config.json beside config.json wins, as in
/// transformers' `generate()`, then config.json.
pub(crate) fn generation_ids(c: &HfConfig, key: &str) -> Vec<u32> {
    let beside = std::path::Path::new(&c.origin).with_file_name("generation_config.json");
    if let Ok(text) = std::fs::read_to_string(beside) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return ids(v.get(key));
            }
        }
    }
    ids(c.json.get(key))
}

/// The generation facts of a checkpoint, for families that spell them the transformers way.
pub(crate) fn seq2seq_info(
    c: &HfConfig,
    architecture: &str,
    vocab_size: usize,
    max_source_tokens: Option<usize>,
    max_target_tokens: Option<usize>,
) -> Result<Seq2SeqInfo> {
    let decoder_start_token_id = generation_ids(c, "decoder_start_token_id")
        .first()
        .copied()
        .ok_or_else(|| Error::BadConfig {
            path: c.origin.clone(),
            reason: "missing `decoder_start_token_id`".into(),
        })?;
    Ok(Seq2SeqInfo {
        architecture: architecture.to_string(),
        vocab_size,
        decoder_start_token_id,
        eos_token_ids: generation_ids(c, "eos_token_id"),
        forced_bos_token_id: generation_ids(c, "forced_bos_token_id").first().copied(),
        forced_eos_token_id: generation_ids(c, "forced_eos_token_id").first().copied(),
        max_source_tokens,
        max_target_tokens,
    })
}
