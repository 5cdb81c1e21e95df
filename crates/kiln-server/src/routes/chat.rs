//! `POST /v1/chat/completions`: the message list rendered by the model's chat template (with the
//! generation prompt), generated like a completion, answered as `chat.completion` or streamed as
//! `chat.completion.chunk`s (a first chunk with the assistant role, content deltas, a last chunk
//! with the finish reason).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

use super::completions::rand_id;
use super::{parse_json_strict, token_text};
use crate::error::ApiError;
use crate::generate::{self, Item, Token};
use crate::params;
use crate::protocol::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatDelta, ChatLogprobs, ChatMessageIn, ChatMessageOut,
    ChatRequest, ChatResponse, ChatTokenLogprob, ChatTopLogprob, MessageContent, Usage,
};
use crate::{sse, AppState, ServedModel};

pub async fn handler(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(state, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The prompt text of a message list, after the chat template.
pub fn render(
    chat: Option<&ChatTemplate>,
    messages: &[ChatMessageIn],
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    let chat = chat.ok_or_else(|| {
        ApiError::invalid(
            "this model has no chat template: use /v1/completions",
            Some("messages"),
        )
    })?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    let mut list = Vec::with_capacity(messages.len());
    for m in messages {
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(s)) => s.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                format!("content parts of type `{}` are not supported", p.kind),
                                Some("messages"),
                            ))
                        }
                    }
                }
                s
            }
        };
        list.push(ChatMessage::new(m.role.clone(), content));
    }
    chat.render(&list, add_generation_prompt)
        .map_err(|e| ApiError::invalid(format!("chat template: {e}"), Some("messages")))
}

async fn run(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let req: ChatRequest = parse_json_strict(
        &state,
        body,
        crate::openapi::request_fields("ChatCompletionRequest"),
    )?;
    state.check_model(req.model.as_deref())?;
    let ServedModel::Generator {
        engine,
        handle,
        chat,
    } = &state.model
    else {
        return Err(ApiError::invalid(
            "this model is an encoder: it serves /v1/embeddings only",
            Some("model"),
        ));
    };
    let text = render(chat.as_deref(), &req.messages, true)?;
    // The template already holds any BOS.
    let prompt = engine
        .tokenizer
        .encode(&text, false)
        .map_err(ApiError::from_tokenizer)?;
    let max_context = engine.info.max_context;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the messages render to an empty prompt",
            Some("messages"),
        ));
    }
    if prompt.len() >= max_context {
        return Err(ApiError::ContextLength(format!(
            "This model's maximum context length is {max_context} tokens. However, your \
             messages resulted in {} tokens. Please reduce the length of the messages.",
            prompt.len()
        )));
    }
    let mut sampling = params::sampling(&req.sampling, 1)?;
    let (limit, name) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(n), _) => (Some(n), "max_completion_tokens"),
        (None, n) => (n, "max_tokens"),
    };
    sampling.params.max_tokens = params::max_tokens(
        limit,
        name,
        prompt.len(),
        max_context,
        state.config.default_max_tokens,
    )?;
    let top = params::top_logprobs(req.top_logprobs, "top_logprobs")?;
    let logprobs = match (req.logprobs.unwrap_or(false), top) {
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "`top_logprobs` requires `logprobs` to be true",
                Some("top_logprobs"),
            ))
        }
    };
    let prompts = [prompt];
    let runs = generate::submit_all(&state, handle, &prompts, &sampling, logprobs, arrival)?;
    let id = format!("chatcmpl-{:032x}", rand_id());
    let model = state.config.served_model_name.clone();
    let created = crate::unix_now();
    let engine = engine.clone();
    if sampling.stream {
        let include_usage = sampling.include_usage;
        let n = runs.len();
        let chunk = move |choices: Vec<ChatChunkChoice>, usage: Option<Usage>| {
            sse::json(&ChatChunk {
                id: id.clone(),
                object: "chat.completion.chunk",
                created,
                model: model.clone(),
                choices,
                usage,
                system_fingerprint: None,
            })
        };
        let mut started = vec![false; n];
        let format = move |item: Item| -> Vec<String> {
            let mut out = Vec::new();
            let mut open = |index: usize, out: &mut Vec<String>| {
                if index < started.len() && !started[index] {
                    started[index] = true;
                    out.push(chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: Some("assistant"),
                                content: Some(String::new()),
                            },
                            logprobs: None,
                            finish_reason: None,
                        }],
                        None,
                    ));
                }
            };
            match item {
                Item::Delta { index, text, token } => {
                    open(index, &mut out);
                    if text.is_empty() && token.is_none() {
                        return out;
                    }
                    let logprobs = token.map(|t| logprobs_of(&engine.tokenizer, &[t]));
                    out.push(chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: None,
                                content: Some(text),
                            },
                            logprobs,
                            finish_reason: None,
                        }],
                        None,
                    ));
                }
                Item::Finished {
                    index,
                    tail,
                    reason,
                } => {
                    open(index, &mut out);
                    if !tail.is_empty() {
                        out.push(chunk(
                            vec![ChatChunkChoice {
                                index,
                                delta: ChatDelta {
                                    role: None,
                                    content: Some(tail),
                                },
                                logprobs: None,
                                finish_reason: None,
                            }],
                            None,
                        ));
                    }
                    out.push(chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta::default(),
                            logprobs: None,
                            finish_reason: Some(reason),
                        }],
                        None,
                    ));
                }
                Item::Done {
                    prompt_tokens,
                    completion_tokens,
                } => {
                    if include_usage {
                        out.push(chunk(
                            Vec::new(),
                            Some(Usage::new(prompt_tokens, completion_tokens)),
                        ));
                    }
                }
                Item::Error(e) => out.push(sse::json(&e.body())),
            }
            out
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
            ChatChoice {
                index,
                logprobs: logprobs.map(|_| logprobs_of(&engine.tokenizer, &o.tokens)),
                message: ChatMessageOut {
                    role: "assistant",
                    content: o.text,
                },
                finish_reason: o.finish_reason,
            }
        })
        .collect();
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
        system_fingerprint: None,
    })
    .into_response())
}

fn logprobs_of(tokenizer: &Tokenizer, tokens: &[Token]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .filter_map(|t| {
            let lp = t.logprob.as_ref()?;
            let token = token_text(tokenizer, t.id);
            Some(ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(tokenizer, id);
                        ChatTopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            })
        })
        .collect();
    ChatLogprobs { content }
}
