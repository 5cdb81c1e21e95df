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
