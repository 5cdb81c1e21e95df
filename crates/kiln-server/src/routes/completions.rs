//! `POST /v1/completions`: OpenAI's legacy completions, one choice per prompt and `n`, streamed
//! as `text_completion` chunks when `stream` is set.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use super::{check_ids, parse_json_strict, token_text};
use crate::error::ApiError;
use crate::generate::{self, Item, Token};
use crate::params;
use crate::protocol::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, PromptInput, Usage,
};
use crate::{sse, AppState, ServedModel};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn handler(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(state, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let req: CompletionRequest = parse_json_strict(
        &state,
        body,
        crate::openapi::request_fields("CompletionRequest"),
    )?;
    state.check_model(req.model.as_deref())?;
    let ServedModel::Generator { engine, handle, .. } = &state.model else {
        return Err(ApiError::invalid(
            "this model is an encoder: it serves /v1/embeddings only",
            Some("model"),
        ));
    };
    if req.echo == Some(true) {
        return Err(ApiError::invalid("`echo` is not supported", Some("echo")));
    }
    let tok = &engine.tokenizer;
    let encode = |s: &str| tok.encode(s, true).map_err(ApiError::from_tokenizer);
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptInput::Text(s) => vec![encode(s)?],
        PromptInput::Texts(v) => v.iter().map(|s| encode(s)).collect::<Result<_, _>>()?,
        PromptInput::Ids(v) => vec![v.clone()],
        PromptInput::IdLists(v) => v.clone(),
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid(
            "`prompt` must not be empty",
            Some("prompt"),
        ));
    }
    let max_context = engine.info.max_context;
    for p in &prompts {
        check_ids(p, engine.info.vocab_size, "prompt")?;
        if p.len() >= max_context {
            return Err(ApiError::ContextLength(format!(
                "This model's maximum context length is {max_context} tokens. However, your \
                 prompt has {} tokens. Please reduce the length of the prompt.",
                p.len()
            )));
        }
    }
    let mut sampling = params::sampling(&req.sampling, prompts.len())?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    sampling.params.max_tokens = params::max_tokens(
        req.max_tokens,
        "max_tokens",
        longest,
        max_context,
        DEFAULT_MAX_TOKENS,
    )?;
    let logprobs = params::top_logprobs(req.logprobs, "logprobs")?;
    let runs = generate::submit_all(&state, handle, &prompts, &sampling, logprobs, arrival)?;
    let id = format!("cmpl-{:032x}", rand_id());
    let model = state.config.served_model_name.clone();
    let created = crate::unix_now();
    let engine = engine.clone();
    if sampling.stream {
        let include_usage = sampling.include_usage;
        let chunk = move |choices: Vec<CompletionChoice>, usage: Option<Usage>| {
            sse::json(&CompletionResponse {
                id: id.clone(),
                object: "text_completion",
                created,
                model: model.clone(),
                choices,
                usage,
                system_fingerprint: None,
            })
        };
        let format = move |item: Item| -> Vec<String> {
            match item {
                Item::Delta { index, text, token } => {
                    if text.is_empty() && token.is_none() {
                        return Vec::new();
                    }
                    let logprobs = token.map(|t| logprobs_of(&engine.tokenizer, &[t]));
                    vec![chunk(
                        vec![CompletionChoice {
                            index,
                            text,
                            logprobs,
                            finish_reason: None,
                        }],
                        None,
                    )]
                }
                Item::Finished {
                    index,
                    tail,
                    reason,
                } => vec![chunk(
                    vec![CompletionChoice {
                        index,
                        text: tail,
                        logprobs: None,
                        finish_reason: Some(reason),
                    }],
                    None,
                )],
                Item::Done {
                    prompt_tokens,
                    completion_tokens,
                } if include_usage => {
                    vec![chunk(
                        Vec::new(),
                        Some(Usage::new(prompt_tokens, completion_tokens)),
                    )]
                }
                Item::Done { .. } => Vec::new(),
                Item::Error(e) => vec![sse::json(&e.body())],
            }
        };
        return Ok(sse::respond(generate::merge(runs), format));
    }
    let outputs = generate::collect(runs).await?;
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            prompt_tokens += o.prompt_tokens;
            completion_tokens += o.completion_tokens;
            CompletionChoice {
                index,
                logprobs: logprobs.map(|_| logprobs_of(&engine.tokenizer, &o.tokens)),
                text: o.text,
                finish_reason: o.finish_reason,
            }
        })
        .collect();
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices,
        usage: Some(Usage::new(prompt_tokens, completion_tokens)),
        system_fingerprint: None,
    })
    .into_response())
}

/// The legacy parallel-array logprobs of `tokens`.
fn logprobs_of(tokenizer: &kiln_tokenizer::Tokenizer, tokens: &[Token]) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let Some(lp) = &t.logprob else { continue };
        out.tokens.push(token_text(tokenizer, t.id));
        out.token_logprobs.push(lp.logprob);
        let mut top = Map::new();
        for &(id, l) in &lp.top {
            top.insert(token_text(tokenizer, id), Value::from(l));
        }
        out.top_logprobs.push(top);
        out.text_offset.push(t.offset);
    }
    out
}

/// A random 128-bit request id.
pub fn rand_id() -> u128 {
    rand::random::<u128>()
}
