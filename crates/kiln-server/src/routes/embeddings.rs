//! `POST /v1/embeddings` for encoder models: `input` as a string or a list of strings,
//! `encoding_format` `float` (a list of numbers) or `base64` (little-endian f32 bytes, as the
//! `openai` client decodes them). Inputs longer than the model's limit are refused (400), not
//! truncated, as OpenAI does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::Value;

use super::parse_json;
use crate::error::ApiError;
use crate::protocol::{
    EmbeddingData, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
};
use crate::{AppState, ServedModel};

/// The most inputs in one request.
const MAX_INPUTS: usize = 2048;
/// Inputs per encoder forward pass.
const BATCH: usize = 32;

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
    let req: EmbeddingRequest = parse_json(&state, body)?;
    state.check_model(req.model.as_deref())?;
    let ServedModel::Encoder(encoder) = &state.model else {
        return Err(ApiError::invalid(
            "this model generates text: it does not serve /v1/embeddings",
            Some("model"),
        ));
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`encoding_format` must be `float` or `base64`, not `{other}`"),
                Some("encoding_format"),
            ))
        }
    };
    let hidden = encoder.model.cfg.hidden;
    if let Some(d) = req.dimensions {
        if d != hidden as i64 {
            return Err(ApiError::invalid(
                format!("`dimensions` = {d}: this model only produces {hidden}"),
                Some("dimensions"),
            ));
        }
    }
    let texts = match req.input {
        EmbeddingInput::Text(s) => vec![s],
        EmbeddingInput::Texts(v) => v,
        EmbeddingInput::Ids(_) | EmbeddingInput::IdLists(_) => {
            return Err(ApiError::invalid(
                "token-id inputs are not supported: send text",
                Some("input"),
            ))
        }
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS || texts.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            format!("`input` must hold 1 to {MAX_INPUTS} non-empty strings"),
            Some("input"),
        ));
    }
    let enc = encoder.clone();
    let out = tokio::task::spawn_blocking(move || enc.embed(&texts, &enc.pooling, BATCH, false))
        .await
        .map_err(|e| ApiError::Internal(format!("embedding task: {e}")))?
        .map_err(|e| ApiError::invalid(e.to_string(), Some("input")))?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model: state.config.served_model_name.clone(),
        usage: EmbeddingUsage {
            prompt_tokens: out.n_tokens,
            total_tokens: out.n_tokens,
        },
    })
    .into_response())
}
