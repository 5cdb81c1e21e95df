//! The one mapping from everything that can go wrong with a request to an OpenAI-style error
//! response: `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
//!
//! Reference: OpenAI's error object (`type` is `invalid_request_error` for the client's
//! mistakes) and vLLM's `ErrorResponse`. Status choices: malformed JSON and wrong field types are
//! 400 (as OpenAI does; axum's default would be 422 for types and 400 for syntax, two answers to
//! one kind of mistake), an unknown model 404, a body over the limit 413, a full waiting queue
//! 429 with `Retry-After`, a server that is shutting down 503 with `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::SubmitError;

/// Seconds a client is told to wait before retrying a 429 or 503.
const RETRY_AFTER_S: &str = "1";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A parameter is missing, of the wrong type or out of range; `param` names it when known.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// The prompt does not fit the context window.
    #[error("{0}")]
    ContextLength(String),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the server is overloaded: the waiting queue is full, retry later")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::ContextLength(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and `code` fields.
    fn type_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { .. } => ("invalid_request_error", None),
            ApiError::ContextLength(_) => {
                ("invalid_request_error", Some("context_length_exceeded"))
            }
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::RouteNotFound(_) => ("invalid_request_error", Some("not_found")),
            ApiError::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", Some("request_too_large"))
            }
            ApiError::QueueFull => ("rate_limit_error", Some("rate_limit_exceeded")),
            ApiError::ShuttingDown => ("service_unavailable_error", Some("shutting_down")),
            ApiError::Internal(_) => ("server_error", None),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::ContextLength(_) => Some("messages"),
            ApiError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The JSON body, also used for errors sent inside an SSE stream.
    pub fn body(&self) -> ErrorBody {
        let (kind, code) = self.type_and_code();
        ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind,
                param: self.param().map(str::to_string),
                code,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if matches!(self, ApiError::QueueFull | ApiError::ShuttingDown) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        resp
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::QueueFull => ApiError::QueueFull,
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::PromptTooLong { .. } => ApiError::ContextLength(e.to_string()),
            SubmitError::EmptyPrompt => ApiError::invalid(e.to_string(), Some("prompt")),
            SubmitError::InvalidParams(m) => ApiError::invalid(m, None),
        }
    }
}

impl From<kiln_engine::SamplingError> for ApiError {
    fn from(e: kiln_engine::SamplingError) -> ApiError {
        let kiln_engine::SamplingError::InvalidParameter { param, .. } = &e;
        ApiError::invalid(e.to_string(), Some(param))
    }
}

impl From<kiln_engine::Error> for ApiError {
    fn from(e: kiln_engine::Error) -> ApiError {
        use kiln_engine::Error as E;
        match e {
            E::PromptTooLong { .. } => ApiError::ContextLength(e.to_string()),
            E::EmptyPrompt | E::InvalidArgument(_) | E::NoChatTemplate => {
                ApiError::invalid(e.to_string(), None)
            }
            E::Sampling(s) => s.into(),
            // Tokenizer errors on user text (e.g. a chat template raising) are the request's.
            E::Tokenizer(t) => ApiError::invalid(t.to_string(), None),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Serde's message for a body that does not parse, with the offending field when serde names
/// it (`unknown variant`, `invalid type ... at line 1 column 40`).
pub fn json_error(e: serde_json::Error) -> ApiError {
    ApiError::invalid(format!("invalid JSON body: {e}"), None)
}

impl ApiError {
    /// A tokenizer failure on the client's text or ids is the request's problem.
    pub fn from_tokenizer(e: kiln_tokenizer::Error) -> ApiError {
        ApiError::invalid(e.to_string(), None)
    }
}
