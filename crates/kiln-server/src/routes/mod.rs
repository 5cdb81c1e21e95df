//! HTTP handlers, one module per endpoint family; each turns its body into engine calls and its
//! result into the OpenAI shape, returning errors as [`crate::error::ApiError`].

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod info;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{json_error, ApiError};
use crate::AppState;

/// Parses a JSON body: a body over the limit is 413, anything that does not parse into `T` is
/// 400 (axum's `Json` would answer 415/422/400 for different flavours of the same mistake).
pub fn parse_json<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.max_body_bytes,
            }
        } else {
            ApiError::invalid(format!("could not read the request body: {rej}"), None)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(json_error)
}

/// [`parse_json`] for a body whose top-level fields must all be `known` (a generation request:
/// a field kiln does not implement is a 400 naming it, never silently dropped, so a client
/// asking for `tools` or `response_format` learns that it did not get them).
pub fn parse_json_strict<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    known: &[String],
) -> Result<T, ApiError> {
    let value: serde_json::Value = parse_json(state, body)?;
    if let Some(obj) = value.as_object() {
        if let Some(k) = obj.keys().find(|k| !known.iter().any(|n| n == *k)) {
            return Err(ApiError::invalid(
                format!("unsupported parameter `{k}`: kiln does not implement it"),
                Some(k),
            ));
        }
    }
    serde_json::from_value(value).map_err(json_error)
}

/// A token's text on its own, for logprobs (`decode([id])`, as vLLM reports tokens).
pub fn token_text(tokenizer: &kiln_tokenizer::Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Checks token ids given by the client against the vocabulary.
pub fn check_ids(ids: &[u32], vocab: usize, param: &str) -> Result<(), ApiError> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(ApiError::invalid(
            format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
            Some(param),
        )),
        None => Ok(()),
    }
}
