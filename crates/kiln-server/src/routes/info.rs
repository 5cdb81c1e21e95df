//! The small endpoints: `/v1/models`, `/health`, `/metrics`, `/openapi.json`, and vLLM's
//! `/tokenize` and `/detokenize`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{check_ids, parse_json};
use crate::error::ApiError;
use crate::protocol::{
    DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList, TokenizeRequest, TokenizeResponse,
};
use crate::{AppState, ServedModel};

pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.config.served_model_name.clone(),
            object: "model",
            created: state.created,
            owned_by: "kiln",
            max_model_len: state.max_model_len(),
        }],
    })
}

/// 200 with an empty body while serving (vLLM's); the shutdown gate answers 503 before this.
pub async fn health() -> StatusCode {
    StatusCode::OK
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (stats, moe) = match &state.model {
        ServedModel::Generator { handle, engine, .. } => {
            (Some(handle.stats()), engine.model.moe_stats())
        }
        ServedModel::Encoder(_) => (None, None),
    };
    let mut text = state.metrics.render(stats.as_ref());
    if let Some(m) = moe {
        let layers: Vec<(usize, Vec<u64>)> = m
            .layers
            .iter()
            .map(|(i, s)| (*i, s.expert_tokens.clone()))
            .collect();
        crate::metrics::render_moe(&mut text, &layers, m.aux_loss());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    Json(crate::openapi::document(&state.config.served_model_name)).into_response()
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<TokenizeResponse, ApiError> {
        let req: TokenizeRequest = parse_json(&state, body)?;
        state.check_model(req.model.as_deref())?;
        let tok = state.tokenizer();
        let tokens = match (&req.prompt, &req.messages) {
            (Some(p), None) => tok.encode(p, req.add_special_tokens.unwrap_or(true)),
            (None, Some(m)) => {
                let chat = match &state.model {
                    ServedModel::Generator { chat, .. } => chat.as_deref(),
                    ServedModel::Encoder(_) => None,
                };
                let text = super::chat::render(chat, m, req.add_generation_prompt.unwrap_or(true))?;
                tok.encode(&text, req.add_special_tokens.unwrap_or(false))
            }
            _ => {
                return Err(ApiError::invalid(
                    "give exactly one of `prompt` and `messages`",
                    Some("prompt"),
                ))
            }
        }
        .map_err(ApiError::from_tokenizer)?;
        Ok(TokenizeResponse {
            count: tokens.len(),
            max_model_len: state.max_model_len(),
            tokens,
        })
    };
    match run() {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<DetokenizeResponse, ApiError> {
        let req: DetokenizeRequest = parse_json(&state, body)?;
        state.check_model(req.model.as_deref())?;
        let tok = state.tokenizer();
        let vocab = tok.vocab_size();
        let ids: Vec<u32> = req
            .tokens
            .iter()
            .map(|&t| u32::try_from(t).unwrap_or(u32::MAX))
            .collect();
        check_ids(&ids, vocab, "tokens")?;
        let prompt = tok.decode(&ids, false).map_err(ApiError::from_tokenizer)?;
        Ok(DetokenizeResponse { prompt })
    };
    match run() {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
