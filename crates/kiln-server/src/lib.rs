//! kiln-server: an OpenAI-compatible HTTP server (axum) over the kiln engine.
//!
//! The only crate that knows HTTP and OpenAI schemas (and the only one deriving `Serialize` for
//! API types). Routes: `/v1/completions`, `/v1/chat/completions` (both streaming over SSE),
//! `/v1/embeddings` (encoder models), `/v1/models`, `/health`, `/tokenize`, `/detokenize`
//! (vLLM's shapes), `/metrics` (Prometheus text) and `/openapi.json`.
//!
//! Reference: the OpenAI API reference and vLLM's `entrypoints/openai/api_server.py`.
//!
//! Invariants: every error leaves through [`error::ApiError`]'s one mapping; request bodies are
//! capped at [`ServerConfig::max_body_bytes`]; once shutdown begins new requests get 503 while
//! admitted ones finish.

pub mod error;
mod generate;
pub mod metrics;
pub mod openapi;
mod params;
pub mod protocol;
mod routes;
mod sse;
#[cfg(test)]
mod tests;

/// The engine's request-level API the server is written against (`EngineHandle`,
/// `GenerateRequest`, a `RequestStream` of `Event`s), re-exported for the binary and the tests.
pub mod engine {
    pub use kiln_engine::serving::*;
    pub use kiln_engine::TokenLogprob;
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kiln_engine::{Encoder, Engine};
use kiln_tokenizer::ChatTemplate;

use crate::engine::EngineHandle;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the server serves: a generator (completions, chat) or an encoder (embeddings).
pub enum ServedModel {
    Generator {
        engine: Arc<Engine>,
        handle: EngineHandle,
        /// Boxed: a template is large and the encoder variant small.
        chat: Option<Box<ChatTemplate>>,
    },
    Encoder(Arc<Encoder>),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients pass as `model` (and `/v1/models` lists).
    pub served_model_name: String,
    pub max_body_bytes: usize,
    /// A chat request's `max_tokens` when it gives none (`kiln serve --default-max-tokens`).
    pub default_max_tokens: usize,
}

/// The default of [`ServerConfig::default_max_tokens`]: a long answer, but bounded (without
/// one, a chat request could generate the whole context).
pub const DEFAULT_CHAT_MAX_TOKENS: usize = 1024;

impl ServerConfig {
    pub fn new(served_model_name: impl Into<String>) -> ServerConfig {
        ServerConfig {
            served_model_name: served_model_name.into(),
            max_body_bytes: 4 << 20,
            default_max_tokens: DEFAULT_CHAT_MAX_TOKENS,
        }
    }
}

pub struct AppState {
    pub config: ServerConfig,
    pub model: ServedModel,
    pub metrics: Arc<Metrics>,
    pub created: u64,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(config: ServerConfig, model: ServedModel) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            model,
            metrics: Arc::new(Metrics::default()),
            created: unix_now(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// 404 unless `model` is absent or the served name.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.config.served_model_name => {
                Err(ApiError::ModelNotFound(m.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The largest prompt plus completion, in tokens.
    pub fn max_model_len(&self) -> usize {
        match &self.model {
            ServedModel::Generator { engine, .. } => engine.info.max_context,
            ServedModel::Encoder(e) => e.max_tokens,
        }
    }

    pub fn tokenizer(&self) -> &kiln_tokenizer::Tokenizer {
        match &self.model {
            ServedModel::Generator { engine, .. } => &engine.tokenizer,
            ServedModel::Encoder(e) => &e.tokenizer,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops admitting (503 from now on), lets the engine finish what it admitted, and returns
    /// once it has. Blocking: call it from a blocking thread.
    pub fn drain(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if let ServedModel::Generator { handle, .. } = &self.model {
            handle.shutdown();
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The application: every route, the body limit and the shutdown gate.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(routes::completions::handler))
        .route("/v1/chat/completions", post(routes::chat::handler))
        .route("/v1/embeddings", post(routes::embeddings::handler))
        .route("/v1/models", get(routes::info::models))
        .route("/health", get(routes::info::health))
        .route("/tokenize", post(routes::info::tokenize))
        .route("/detokenize", post(routes::info::detokenize))
        .route("/metrics", get(routes::info::metrics))
        .route("/openapi.json", get(routes::info::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Once shutdown has begun, requests other than scrapes get 503.
async fn gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.is_shutting_down() && req.uri().path() != "/metrics" {
        return ApiError::ShuttingDown.into_response();
    }
    next.run(req).await
}

/// Serves on `listener` until `signal` resolves, then drains: 503 for new requests, running
/// ones finish, and the function returns once every response has been sent.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let drained = async move {
        signal.await;
        tracing::info!("shutting down: finishing running requests");
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || st.drain()).await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(drained)
        .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
