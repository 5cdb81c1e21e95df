//! Generation with encoder-decoder models (T5, BART, Marian): the encoder runs once over the
//! source, its cross-attention keys/values are computed once ([`EncoderMemory`]), then the
//! decoder runs from `decoder_start_token_id` one token per step with its own self-attention
//! [`KvCache`], sampling (greedy at temperature 0) until EOS, a stop string or `max_tokens`.
//!
//! Reference: transformers `GenerationMixin.generate` for encoder-decoders. Forced tokens follow
//! its logits processors: `forced_bos_token_id` is the first generated token and
//! `forced_eos_token_id` the last one the length budget allows (`max_length - 1`, counting the
//! start token). As in the causal loop, a token ending the sequence (EOS) is not part of
//! `token_ids`.
//!
//! [`Seq2SeqBeam`] lets beam search (beam/) drive the same decoder: a beam's state is its own
//! decoder cache; the encoder memory is one shared borrow that no beam copies.
//!
//! Deviation: under beam search a forced token arrives as a one-hot row before the search's own
//! n-gram and min-new-tokens bans, while transformers applies the forced-token processors last;
//! the two differ only when such a ban hits the forced token itself (e.g. a forced EOS that
//! `no_repeat_ngram_size = 1` forbids), where kiln drops that beam's continuations.

use std::time::Instant;

use kiln_models::{EncoderMemory, Seq2Seq};
use kiln_nn::{Batch, KvCache, SeqCaches, SeqSpan};

use crate::beam::{beam_search, BeamGeneration, BeamModel, BeamParams};
use crate::{
    Engine, Error, FinishReason, Generation, Result, Sampler, SamplingParams, StopChecker, Timings,
};

/// Runs a forward pass as one job inside the thread pool (see `Engine::step` for why).
fn in_pool<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let mut result = None;
    rayon::scope(|_| result = Some(f()));
    result.unwrap_or_else(|| Err(Error::InvalidArgument("forward pass did not run".into())))
}

/// transformers' forced-token processors: the token forced as generated token `t` (0-based) when
/// at most `max_new` tokens are generated, if any.
fn forced_token(m: &Seq2Seq, t: usize, max_new: usize) -> Option<u32> {
    let info = m.info();
    match (info.forced_bos_token_id, info.forced_eos_token_id) {
        (Some(b), _) if t == 0 => Some(b),
        (_, Some(e)) if t + 1 == max_new => Some(e),
        _ => None,
    }
}

/// Most new tokens: what was asked, within the decoder's positions (the start token takes one).
fn max_new_tokens(m: &Seq2Seq, asked: usize) -> usize {
    match m.info().max_target_tokens {
        Some(max) => asked.min(max.saturating_sub(1)),
        None => asked,
    }
}

/// Encoder-decoder models driven by beam search; every beam reads the one encoder memory.
pub struct Seq2SeqBeam<'a> {
    model: &'a Seq2Seq,
    memory: &'a EncoderMemory,
    max_new: usize,
}

impl<'a> Seq2SeqBeam<'a> {
    /// `max_new` is the search's `max_new_tokens`, where `forced_eos_token_id` applies.
    pub fn new(model: &'a Seq2Seq, memory: &'a EncoderMemory, max_new: usize) -> Self {
        Seq2SeqBeam {
            model,
            memory,
            max_new,
        }
    }

    /// Feeds the decoder start token: the initial state and its next-token logits.
    pub fn start(&self) -> Result<(KvCache, Vec<f32>)> {
        let mut states = vec![self.model.new_cache()];
        let start = self.model.info().decoder_start_token_id;
        let logits = self.step(&mut states, &[start])?;
        let logits = logits.into_iter().next().expect("one state gives one row");
        Ok((states.pop().expect("one state"), logits))
    }

    /// A row that beam search's log-softmax turns into 0 for `token` and -inf elsewhere, which
    /// is what transformers' forced-token processors write into the scores.
    fn force(row: &mut [f32], token: u32) {
        row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
        if let Some(x) = row.get_mut(token as usize) {
            *x = 0.0;
        }
    }
}

impl BeamModel for Seq2SeqBeam<'_> {
    type State = KvCache;

    fn step(&self, states: &mut [KvCache], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        crate::beam::check_step(states.len(), tokens.len())?;
        // One new token per beam after its own cached positions; all beams in one pass.
        let positions: Vec<usize> = states.iter().map(|c| c.len()).collect();
        let batch = Batch::new(
            positions.clone(),
            (0..states.len())
                .map(|i| SeqSpan { start: i, len: 1 })
                .collect(),
        );
        let memory = vec![self.memory; states.len()];
        let mut store = SeqCaches(states.iter_mut().collect());
        let flat = in_pool(|| {
            let h = self
                .model
                .decode(tokens, &batch, &mut store, &memory, None)?;
            Ok(self.model.logits(&h)?.into_f32_vec())
        })?;
        let vocab = self.model.info().vocab_size;
        let mut rows: Vec<Vec<f32>> = flat.chunks(vocab).map(<[f32]>::to_vec).collect();
        for (row, &p) in rows.iter_mut().zip(&positions) {
            // The cache held `p` tokens (start included) before this one: the next token is
            // generated token number `p`.
            if let Some(f) = forced_token(self.model, p, self.max_new) {
                Self::force(row, f);
            }
        }
        Ok(rows)
    }
}

impl Engine {
    fn seq2seq(&self) -> Result<&Seq2Seq> {
        self.model.as_seq2seq().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} is not an encoder-decoder model",
                self.info.architecture
            ))
        })
    }

    /// Generates from source ids with an encoder-decoder model; `token_ids` are the decoder's
    /// generated ids (no start token, no final EOS).
    pub fn generate_seq2seq(
        &self,
        source: &[u32],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let m = self.seq2seq()?;
        let info = m.info();
        let mut sampler = Sampler::new(params, info.vocab_size)?;
        let mut stop = StopChecker::new(&params.stop);
        let mut stream = self.tokenizer.decode_stream(true);
        let max_new = max_new_tokens(m, params.max_tokens);
        let start = [info.decoder_start_token_id];
        let mut text = String::new();
        let mut generated: Vec<u32> = Vec::new();
        let mut emit = |piece: &str, text: &mut String| {
            if !piece.is_empty() {
                text.push_str(piece);
                on_text(piece);
            }
        };

        let t0 = Instant::now();
        let memory = in_pool(|| Ok(m.encode_memory(source)?))?;
        let mut cache = m.new_cache();
        let step = |cache: &mut KvCache, token: u32| -> Result<Vec<f32>> {
            let batch = Batch::single(cache.len(), 1);
            in_pool(|| {
                let h = m.decode(&[token], &batch, cache, &[&memory], None)?;
                Ok(m.logits(&h)?.into_f32_vec())
            })
        };
        let mut logits = step(&mut cache, start[0])?;
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let finish = loop {
            if generated.len() >= max_new {
                break FinishReason::Length;
            }
            let next = match forced_token(m, generated.len(), max_new) {
                Some(f) => f,
                None => sampler.sample(&mut logits, &start, &generated),
            };
            if !params.ignore_eos && self.eos_ids().contains(&next) {
                break FinishReason::Stop;
            }
            generated.push(next);
            if let Some(piece) = stream.push(next)? {
                let upd = stop.push(&piece);
                emit(&upd.text, &mut text);
                if upd.stop.is_some() {
                    break FinishReason::Stop;
                }
            }
            if generated.len() >= max_new {
                break FinishReason::Length;
            }
            logits = step(&mut cache, next)?;
        };
        if stop.stopped().is_none() {
            if let Some(piece) = stream.flush()? {
                let upd = stop.push(&piece);
                emit(&upd.text, &mut text);
            }
            emit(&stop.finish(), &mut text);
        }
        let decode_s = t1.elapsed().as_secs_f64();
        let decode_steps = generated.len().saturating_sub(1);
        Ok(Generation {
            text,
            token_ids: generated,
            prompt_tokens: source.len(),
            finish_reason: finish,
            timings: Timings {
                prompt_ms: prompt_s * 1e3,
                decode_ms: decode_s * 1e3,
                prompt_tokens_per_s: source.len() as f64 / prompt_s.max(1e-9),
                decode_tokens_per_s: decode_steps as f64 / decode_s.max(1e-9),
            },
        })
    }

    /// Beam search from source ids with an encoder-decoder model: the encoder and its memory run
    /// once; beams share the memory and fork only their decoder caches. `params.eos` is filled
    /// from the model's EOS ids when empty.
    pub fn generate_seq2seq_beams(
        &self,
        source: &[u32],
        params: &BeamParams,
    ) -> Result<BeamGeneration> {
        let m = self.seq2seq()?;
        let mut params = params.clone();
        if params.eos.is_empty() {
            params.eos = self.eos_ids().to_vec();
        }
        params.max_new_tokens = max_new_tokens(m, params.max_new_tokens);
        params.validate()?;
        let t0 = Instant::now();
        let memory = in_pool(|| Ok(m.encode_memory(source)?))?;
        let beam = Seq2SeqBeam::new(m, &memory, params.max_new_tokens);
        let (cache, logits) = beam.start()?;
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let start = [m.info().decoder_start_token_id];
        let hyps = beam_search(&beam, cache, &logits, &start, &params)?;
        let decode_s = t1.elapsed().as_secs_f64();
        let steps = hyps.iter().map(|h| h.tokens.len()).max().unwrap_or(0);
        let sequences = hyps
            .into_iter()
            .map(|h| self.beam_sequence(h))
            .collect::<Result<Vec<_>>>()?;
        Ok(BeamGeneration {
            sequences,
            prompt_tokens: source.len(),
            timings: Timings {
                prompt_ms: prompt_s * 1e3,
                decode_ms: decode_s * 1e3,
                prompt_tokens_per_s: source.len() as f64 / prompt_s.max(1e-9),
                decode_tokens_per_s: steps.saturating_sub(1) as f64 / decode_s.max(1e-9),
            },
        })
    }
}
