//! kiln-engine: the step loop (schedule -> build batch -> model -> sample -> detokenize).
//!
//! [`Engine`] loads a model with its tokenizer and runs generation and scoring; the
//! tensor-free pieces of the loop's tail are [`sampling`] (logits to the next token id) and
//! [`stop`] (stop strings over streamed text), plus [`FinishReason`].

pub mod beam;
pub mod embed;
mod engine;
mod error;
pub mod sampling;
mod score;
pub mod seq2seq;
mod sequence;
pub mod serving;
pub mod stop;

pub use beam::{
    beam_search, BeamGeneration, BeamModel, BeamParams, BeamSequence, CausalBeam, EarlyStopping,
    Hypothesis,
};
pub use embed::{Classification, Embeddings, Encoder, Entity};
pub use engine::{load_tokenizer, Engine, Generation, Timings};
pub use error::{Error, Result};
pub use score::Score;
pub use seq2seq::Seq2SeqBeam;
pub use sequence::{Sampled, SeqState, TokenLogprob};
pub use serving::{
    kv_bytes_per_token, EngineConfig, EngineHandle, EngineStats, Event, GenerateRequest,
    KvCacheDtype, RequestStream, RequestTimings, SubmitError, Usage, DEFAULT_KV_BYTES,
};

pub use sampling::{
    argmax, log_softmax, log_softmax_in_place, top_logprobs, Sampler, SamplingError, SamplingParams,
};
pub use stop::{StopChecker, StopUpdate};

/// Why a sequence finished, as reported in OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` (or the context length) was reached.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling: `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::FinishReason;

    #[test]
    fn finish_reason_spelling() {
        assert_eq!(FinishReason::Stop.as_str(), "stop");
        assert_eq!(FinishReason::Length.as_str(), "length");
        assert_eq!(FinishReason::Length.to_string(), "length");
    }
}
