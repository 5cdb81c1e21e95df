//! One sequence's generation state: sampler, incremental detokenizer, stop strings and the
//! finish rules, shared by the single-request loop ([`Engine::generate`]) and the serving step
//! loop, so both end a sequence at exactly the same token with exactly the same text.
//!
//! The caller owns the KV cache and the forward pass; this only turns each row of logits into
//! the next token, the text it releases, and whether the sequence is done. Finish rules, in
//! order: `max_tokens` reached; an end-of-sequence id (not emitted, unless `ignore_eos`); a stop
//! string (text truncated right before it); `max_tokens` or the model's context filled
//! (`prompt + generated == max_context`). The text held back for a possible stop string or an
//! incomplete UTF-8 character is released by [`SeqState::finish_text`] when the sequence ends
//! for any reason but a stop string.

use kiln_tokenizer::{DecodeStream, Tokenizer};

use crate::sampling::{log_softmax_in_place, top_logprobs};
use crate::{FinishReason, Result, Sampler, SamplingParams, StopChecker};

/// The log-probability of a generated token under the model (raw logits: before penalties,
/// temperature and truncation, as vLLM and OpenAI report them), with the `top` alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, most likely first; as many as the
    /// request's `logprobs` asked for (empty for `Some(0)`).
    pub top: Vec<(u32, f32)>,
}

/// What one row of logits produced for a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The new token, `None` when it was an end-of-sequence id (which is not part of the output).
    pub id: Option<u32>,
    /// Text released by this token (may be empty: held back for a stop string or an incomplete
    /// character). When `finish` is set and the reason is not a stop string, the held-back tail
    /// is appended here already.
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

/// See the module documentation.
pub struct SeqState<'t> {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    stop: StopChecker,
    stream: DecodeStream<'t>,
    eos: &'t [u32],
    max_tokens: usize,
    ignore_eos: bool,
    max_context: usize,
    logprobs: Option<usize>,
    /// Scratch for the raw logits when logprobs are asked for (sampling rewrites its input).
    raw: Vec<f32>,
    finished: Option<FinishReason>,
}

impl<'t> SeqState<'t> {
    /// Validates `params` (the caller has checked the prompt's length).
    pub fn new(
        tokenizer: &'t Tokenizer,
        eos: &'t [u32],
        prompt: Vec<u32>,
        params: &SamplingParams,
        logprobs: Option<usize>,
        vocab_size: usize,
        max_context: usize,
    ) -> Result<SeqState<'t>> {
        Ok(SeqState {
            prompt,
            generated: Vec::new(),
            sampler: Sampler::new(params, vocab_size)?,
            stop: StopChecker::new(&params.stop),
            stream: tokenizer.decode_stream(true),
            eos,
            max_tokens: params.max_tokens,
            ignore_eos: params.ignore_eos,
            max_context,
            logprobs,
            raw: Vec::new(),
            finished: None,
        })
    }

    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Generated ids so far (end-of-sequence ids excluded).
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Samples the next token from `logits` (one row, the vocabulary wide; rewritten in place)
    /// and applies the finish rules. Must not be called after the sequence finished.
    pub fn accept_logits(&mut self, logits: &mut [f32]) -> Result<Sampled> {
        debug_assert!(self.finished.is_none(), "accept_logits after finish");
        let mut out = Sampled {
            id: None,
            text: String::new(),
            logprob: None,
            finish: None,
        };
        if self.generated.len() >= self.max_tokens {
            return self.finish(out, FinishReason::Length);
        }
        if self.logprobs.is_some() {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
        }
        let next = self.sampler.sample(logits, &self.prompt, &self.generated);
        if let Some(n) = self.logprobs {
            let top = top_logprobs(&self.raw, n);
            log_softmax_in_place(&mut self.raw);
            out.logprob = Some(TokenLogprob {
                id: next,
                logprob: self.raw[next as usize],
                top,
            });
        }
        if !self.ignore_eos && self.eos.contains(&next) {
            return self.finish(out, FinishReason::Stop);
        }
        self.generated.push(next);
        out.id = Some(next);
        if let Some(piece) = self.stream.push(next)? {
            let upd = self.stop.push(&piece);
            out.text = upd.text;
            if upd.stop.is_some() {
                self.finished = Some(FinishReason::Stop);
                out.finish = self.finished;
                return Ok(out);
            }
        }
        if self.generated.len() >= self.max_tokens
            || self.prompt.len() + self.generated.len() >= self.max_context
        {
            return self.finish(out, FinishReason::Length);
        }
        Ok(out)
    }

    fn finish(&mut self, mut out: Sampled, reason: FinishReason) -> Result<Sampled> {
        out.text.push_str(&self.finish_text()?);
        self.finished = Some(reason);
        out.finish = Some(reason);
        Ok(out)
    }

    /// Releases the text still held back by the detokenizer and the stop checker (nothing after
    /// a stop string). Called once at the end; [`accept_logits`](Self::accept_logits) does it
    /// itself when it finishes the sequence.
    pub fn finish_text(&mut self) -> Result<String> {
        let mut text = String::new();
        if self.stop.stopped().is_none() {
            if let Some(piece) = self.stream.flush()? {
                text.push_str(&self.stop.push(&piece).text);
            }
            text.push_str(&self.stop.finish());
        }
        Ok(text)
    }
}
