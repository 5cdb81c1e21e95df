//! From the request's JSON fields to the engine's [`SamplingParams`], checking every numeric
//! field's range so that no input reaches the engine unvalidated.
//!
//! Ranges are OpenAI's where OpenAI documents one (temperature 0..=2, penalties -2..=2, top
//! logprobs 0..=20) and vLLM's for its extensions (`top_k` -1 or 0 = off, `min_p` 0..=1,
//! `repetition_penalty` > 0). `n` times the number of prompts is capped at [`MAX_CHOICES`] so a
//! single request cannot flood the queue.

use kiln_engine::SamplingParams;

use crate::error::ApiError;
use crate::protocol::{SamplingFields, StopInput};

/// The most sequences (`n` times prompts) one request may ask for.
pub const MAX_CHOICES: usize = 64;
/// The most stop strings, and the longest one in bytes.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 1024;
/// OpenAI's limit on logprob alternatives.
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// What the handlers need beyond the engine's parameters.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub params: SamplingParams,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

fn range_f32(v: Option<f64>, name: &str, lo: f64, hi: f64, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x as f32),
        Some(x) => Err(ApiError::invalid(
            format!("`{name}` = {x} is out of range: must be in [{lo}, {hi}]"),
            Some(name),
        )),
    }
}

/// `max_tokens`: at least 1; past the context it is the context-length error.
pub fn max_tokens(
    v: Option<i64>,
    name: &str,
    prompt_len: usize,
    max_context: usize,
    default: usize,
) -> Result<usize, ApiError> {
    let room = max_context.saturating_sub(prompt_len);
    let n = match v {
        None => return Ok(default.min(room).max(1)),
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(
                format!("`{name}` = {n} must be at least 1"),
                Some(name),
            ))
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    if n > room {
        return Err(ApiError::ContextLength(format!(
            "This model's maximum context length is {max_context} tokens. However, you \
             requested {} tokens ({prompt_len} in the prompt, {n} in the completion). Please \
             reduce the length of the prompt or the completion.",
            prompt_len.saturating_add(n)
        )));
    }
    Ok(n)
}

/// Validates the shared sampling fields; `max_tokens` is filled in later, once the prompt
/// length is known.
pub fn sampling(f: &SamplingFields, n_prompts: usize) -> Result<Sampling, ApiError> {
    let temperature = range_f32(f.temperature, "temperature", 0.0, 2.0, 1.0)?;
    let top_p = range_f32(f.top_p, "top_p", 0.0, 1.0, 1.0)?;
    if top_p <= 0.0 {
        return Err(ApiError::invalid(
            "`top_p` must be greater than 0",
            Some("top_p"),
        ));
    }
    let min_p = range_f32(f.min_p, "min_p", 0.0, 1.0, 0.0)?;
    let presence_penalty = range_f32(f.presence_penalty, "presence_penalty", -2.0, 2.0, 0.0)?;
    let frequency_penalty = range_f32(f.frequency_penalty, "frequency_penalty", -2.0, 2.0, 0.0)?;
    let repetition_penalty = range_f32(f.repetition_penalty, "repetition_penalty", 0.0, 10.0, 1.0)?;
    if repetition_penalty <= 0.0 {
        return Err(ApiError::invalid(
            "`repetition_penalty` must be greater than 0",
            Some("repetition_penalty"),
        ));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                format!("`top_k` = {k} must be -1 (off), 0 (off) or positive"),
                Some("top_k"),
            ))
        }
    };
    let n = match f.n {
        None => 1,
        Some(n) if n >= 1 && (n as usize).saturating_mul(n_prompts) <= MAX_CHOICES => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                format!(
                    "`n` = {n} must be at least 1 and `n` times the number of prompts at most \
                     {MAX_CHOICES}"
                ),
                Some("n"),
            ))
        }
    };
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopInput::One(s)) => vec![s.clone()],
        Some(StopInput::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS
        || stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            format!(
                "`stop` must hold at most {MAX_STOPS} non-empty strings of at most \
                 {MAX_STOP_BYTES} bytes"
            ),
            Some("stop"),
        ));
    }
    let include_usage = match (&f.stream_options, f.stream.unwrap_or(false)) {
        (Some(o), true) => o.include_usage.unwrap_or(false),
        (Some(_), false) => {
            return Err(ApiError::invalid(
                "`stream_options` is only allowed when `stream` is true",
                Some("stream_options"),
            ))
        }
        (None, _) => false,
    };
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        frequency_penalty,
        presence_penalty,
        // OpenAI's seed is a signed 64-bit integer; the bits are kept as they are.
        seed: f.seed.map(|s| s as u64),
        max_tokens: 1,
        stop,
        ignore_eos: f.ignore_eos.unwrap_or(false),
    };
    params.validate()?;
    Ok(Sampling {
        params,
        n,
        stream: f.stream.unwrap_or(false),
        include_usage,
    })
}

/// `logprobs` / `top_logprobs` alternatives count, 0..=20.
pub fn top_logprobs(v: Option<i64>, name: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Ok(Some(k as usize)),
        Some(k) => Err(ApiError::invalid(
            format!("`{name}` = {k} must be in [0, {MAX_TOP_LOGPROBS}]"),
            Some(name),
        )),
    }
}

/// The seed of choice `i`: choices of one request differ, and each reproduces.
pub fn seed_for_choice(seed: Option<u64>, i: usize) -> Option<u64> {
    seed.map(|s| s.wrapping_add(i as u64))
}
