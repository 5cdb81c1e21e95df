//! `Engine::generate_beams`: beam search over a prompt with the engine's causal model, its EOS
//! ids and its tokenizer; text is decoded at the end (beams reorder, so nothing streams).

use std::time::Instant;

use super::{beam_search, BeamParams, CausalBeam, Hypothesis};
use crate::{Engine, Error, FinishReason, Result, Timings};

/// One returned hypothesis with its text.
#[derive(Debug, Clone)]
pub struct BeamSequence {
    pub text: String,
    /// Generated ids without the final EOS (as in `Generation::token_ids`).
    pub token_ids: Vec<u32>,
    /// Length-normalised log-probability (HF `sequences_scores`).
    pub score: f32,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone)]
pub struct BeamGeneration {
    /// Best first; `num_return_sequences` of them.
    pub sequences: Vec<BeamSequence>,
    pub prompt_tokens: usize,
    pub timings: Timings,
}

impl Engine {
    /// Beam search from prompt ids. `params.eos` is filled from the model's EOS ids when empty;
    /// `max_new_tokens` is capped so that prompt + generation fits the context.
    pub fn generate_beams(&self, prompt: &[u32], params: &BeamParams) -> Result<BeamGeneration> {
        let max_context = self.info.max_context;
        if prompt.len() >= max_context {
            return Err(Error::PromptTooLong {
                n_tokens: prompt.len(),
                max_context,
            });
        }
        let mut params = params.clone();
        if params.eos.is_empty() {
            params.eos = self.eos_ids().to_vec();
        }
        params.max_new_tokens = params.max_new_tokens.min(max_context - prompt.len());
        params.validate()?;
        let model = CausalBeam::new(&self.model);
        let t0 = Instant::now();
        let (cache, logits) = model.prefill(prompt)?;
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let hyps = beam_search(&model, cache, &logits, prompt, &params)?;
        let decode_s = t1.elapsed().as_secs_f64();
        let steps = hyps.iter().map(|h| h.tokens.len()).max().unwrap_or(0);
        let sequences = hyps
            .into_iter()
            .map(|h| self.beam_sequence(h))
            .collect::<Result<Vec<_>>>()?;
        Ok(BeamGeneration {
            sequences,
            prompt_tokens: prompt.len(),
            timings: Timings {
                prompt_ms: prompt_s * 1e3,
                decode_ms: decode_s * 1e3,
                prompt_tokens_per_s: prompt.len() as f64 / prompt_s.max(1e-9),
                // Steps of the search (each one packed pass over all beams), not tokens of all beams.
                decode_tokens_per_s: steps.saturating_sub(1) as f64 / decode_s.max(1e-9),
            },
        })
    }

    /// A finished hypothesis as returned to callers: its end-of-sequence id dropped, its text.
    pub(crate) fn beam_sequence(&self, h: Hypothesis) -> Result<BeamSequence> {
        let mut ids = h.tokens;
        let finish_reason = if h.ended_by_eos {
            ids.pop();
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        Ok(BeamSequence {
            text: self.tokenizer.decode(&ids, true)?,
            token_ids: ids,
            score: h.score,
            finish_reason,
        })
    }
}
