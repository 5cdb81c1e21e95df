//! Per-request sampling parameters and their validation.
//!
//! Field meanings follow the OpenAI completions API (temperature, top_p, frequency/presence
//! penalties, stop, max_tokens) plus the Hugging Face / vLLM extensions (top_k, min_p,
//! repetition_penalty, ignore_eos). "Off" values are the neutral ones: `top_k = 0`, `top_p = 1`,
//! `min_p = 0`, `repetition_penalty = 1`, penalties `0`.
//!
//! Invalid values are a per-request problem: `validate` returns a [`SamplingError`] naming the
//! parameter, which the server maps to a 400, never an engine failure.

use thiserror::Error;

/// Why a [`SamplingParams`] was rejected. The message names the parameter and the accepted range.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplingError {
    /// A parameter is outside its accepted range (or is NaN / infinite).
    #[error("invalid sampling parameter `{param}` = {value}: {expected}")]
    InvalidParameter {
        /// The parameter's name as spelled in the API (`top_p`, `temperature`, ...).
        param: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl SamplingError {
    fn invalid(param: &'static str, value: impl std::fmt::Debug, expected: &'static str) -> Self {
        SamplingError::InvalidParameter {
            param,
            value: format!("{value:?}"),
            expected,
        }
    }
}

/// How to pick each next token for one request, and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax after penalties).
    pub temperature: f32,
    /// Keep only the `top_k` highest logits (ties at the boundary kept, as in HF); `0` = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest prefix whose mass reaches `top_p`; `1` = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p * p_max`; `0` = off.
    pub min_p: f32,
    /// HF repetition penalty over prompt + generated tokens: positive logits are divided by it,
    /// negative ones multiplied; `1` = off.
    pub repetition_penalty: f32,
    /// OpenAI frequency penalty over generated tokens: `logit -= frequency_penalty * count`.
    pub frequency_penalty: f32,
    /// OpenAI presence penalty over generated tokens: `logit -= presence_penalty` if seen.
    pub presence_penalty: f32,
    /// RNG seed; `None` draws one from OS entropy.
    pub seed: Option<u64>,
    /// Maximum number of tokens to generate.
    pub max_tokens: usize,
    /// Stop strings; the output is truncated right before the first one found.
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, no truncation, no penalties, 16 tokens (the
    /// `/v1/completions` default, also vLLM's).
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy parameters (temperature 0), otherwise defaults.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// True when the next token is the argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every parameter's range; the first violation is returned.
    ///
    /// Penalties are limited to OpenAI's documented `[-2, 2]`; `max_tokens` must be at least 1
    /// and stop strings non-empty (an empty stop string would match before the first token).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(SamplingError::invalid(
                "temperature",
                t,
                "must be finite and >= 0",
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplingError::invalid("top_p", p, "must be in (0, 1]"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(SamplingError::invalid("min_p", m, "must be in [0, 1]"));
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(SamplingError::invalid(
                "repetition_penalty",
                r,
                "must be finite and > 0",
            ));
        }
        for (param, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(SamplingError::invalid(param, v, "must be in [-2, 2]"));
            }
        }
        if self.max_tokens == 0 {
            return Err(SamplingError::invalid(
                "max_tokens",
                self.max_tokens,
                "must be >= 1",
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(SamplingError::invalid(
                "stop",
                "",
                "stop strings must be non-empty",
            ));
        }
        Ok(())
    }
}
