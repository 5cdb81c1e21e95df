//! [`EngineHandle::generate`]: one request through the serving engine, collected into a
//! [`Generation`] — what `kiln generate` runs, so the command line and the server share the
//! scheduler, the paged KV cache and the step loop.

use super::{EngineHandle, Event, GenerateRequest, SubmitError};
use crate::{Error, Generation, Result, SamplingParams, Timings};

impl EngineHandle {
    /// Submits `prompt` and blocks until it finishes, calling `on_text` with each released
    /// piece of text. Do not call from inside an async runtime (see `RequestStream::recv`).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let mut stream = self
            .submit(GenerateRequest::new(prompt.to_vec(), params.clone()))
            .map_err(|e| match e {
                SubmitError::EmptyPrompt => Error::EmptyPrompt,
                SubmitError::PromptTooLong {
                    n_tokens,
                    max_context,
                } => Error::PromptTooLong {
                    n_tokens,
                    max_context,
                },
                other => Error::InvalidArgument(other.to_string()),
            })?;
        let (mut text, mut token_ids) = (String::new(), Vec::new());
        loop {
            let event = stream.recv().ok_or_else(|| {
                Error::InvalidArgument("the engine stopped before the request finished".into())
            })?;
            match event {
                Event::Token { id, text: t, .. } => {
                    token_ids.push(id);
                    if !t.is_empty() {
                        on_text(&t);
                        text.push_str(&t);
                    }
                }
                Event::Finished {
                    reason,
                    text: t,
                    usage,
                    timings,
                } => {
                    if !t.is_empty() {
                        on_text(&t);
                        text.push_str(&t);
                    }
                    // The first token comes out of the prefill; decode = the tokens after it.
                    let prompt_ms = timings.ttft_ms - timings.queue_ms;
                    let computed = usage.prompt_tokens - usage.cached_tokens;
                    let decode_steps = token_ids.len().saturating_sub(1);
                    return Ok(Generation {
                        text,
                        token_ids,
                        prompt_tokens: usage.prompt_tokens,
                        finish_reason: reason,
                        timings: Timings {
                            prompt_ms,
                            decode_ms: timings.decode_ms,
                            prompt_tokens_per_s: computed as f64 / (prompt_ms / 1e3).max(1e-9),
                            decode_tokens_per_s: decode_steps as f64
                                / (timings.decode_ms / 1e3).max(1e-9),
                        },
                    });
                }
                Event::Failed(msg) => return Err(Error::InvalidArgument(msg)),
            }
        }
    }
}
