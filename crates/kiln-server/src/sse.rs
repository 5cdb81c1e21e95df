//! Server-sent events framing for streamed completions: each chunk is one `data: <json>` event
//! followed by a blank line, and the stream ends with `data: [DONE]` (OpenAI's convention, which
//! the `openai` client's stream reader waits for).
//!
//! An error after the response has started (status already 200) is sent as a `data:` event
//! holding the usual error object, then `[DONE]`, as vLLM does.

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};

use crate::generate::Item;

/// The SSE response for a merged generation stream; `format` turns each item into the JSON
/// strings of zero or more events. The stream ends after `Done` or `Error`, then `[DONE]`.
pub fn respond<F>(items: BoxStream<'static, Item>, mut format: F) -> Response
where
    F: FnMut(Item) -> Vec<String> + Send + 'static,
{
    let events = items
        .flat_map(move |item| stream::iter(format(item)))
        .chain(stream::once(async { "[DONE]".to_string() }))
        .map(|data| Ok::<_, std::convert::Infallible>(Event::default().data(data)));
    Sse::new(events).into_response()
}

/// Serialises a chunk; the types are plain data, so this cannot fail in practice, and if it
/// did the client would get an error event rather than a broken frame.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| {
        serde_json::to_string(&crate::error::ApiError::Internal(e.to_string()).body())
            .unwrap_or_default()
    })
}
