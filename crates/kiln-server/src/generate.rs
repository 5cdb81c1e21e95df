//! What both generation endpoints share: submitting a request's sequences (`n` per prompt) to
//! the engine, collecting them into whole outputs, or merging them into one stream of events.
//!
//! Cancellation is ownership: the [`RequestStream`]s live in the handler's future (collect) or
//! in the response body's stream (stream); when the client goes away hyper drops either, which
//! drops the streams, which cancels the requests in the engine — no polling of the socket.

use std::time::Instant;

use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use kiln_engine::FinishReason;

use crate::engine::{Event, GenerateRequest, RequestStream, TokenLogprob};
use crate::error::ApiError;
use crate::metrics::{Outcome, RequestTracker};
use crate::params::{seed_for_choice, Sampling};
use crate::AppState;

/// One sequence submitted to the engine.
pub struct Run {
    pub index: usize,
    /// The first choice of its prompt: the one whose prompt tokens count in `usage` (vLLM
    /// counts a prompt once however many choices it has).
    pub first_of_prompt: bool,
    pub stream: RequestStream,
    pub tracker: RequestTracker,
}

/// Submits `n` sequences per prompt; choice `p * n + i` is prompt `p`'s `i`-th. If one is
/// refused the others are dropped (cancelled) and the error is returned.
pub fn submit_all(
    state: &AppState,
    handle: &crate::engine::EngineHandle,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    logprobs: Option<usize>,
    arrival: Instant,
) -> Result<Vec<Run>, ApiError> {
    let mut runs = Vec::with_capacity(prompts.len() * sampling.n);
    for (p, prompt) in prompts.iter().enumerate() {
        for i in 0..sampling.n {
            let index = p * sampling.n + i;
            let mut params = sampling.params.clone();
            params.seed = seed_for_choice(params.seed, index);
            let req = GenerateRequest {
                prompt: prompt.clone(),
                params,
                priority: 0,
                logprobs,
            };
            match handle.submit(req) {
                Ok(stream) => runs.push(Run {
                    index,
                    first_of_prompt: i == 0,
                    stream,
                    tracker: RequestTracker::new(state.metrics.clone(), arrival),
                }),
                Err(e) => {
                    state.metrics.count(Outcome::Rejected);
                    // The sequences already admitted are not the client's to keep.
                    for r in runs {
                        r.tracker.discard();
                    }
                    return Err(e.into());
                }
            }
        }
    }
    Ok(runs)
}

/// A generated token with the byte offset of its text in the output.
#[derive(Debug, Clone)]
pub struct Token {
    pub id: u32,
    pub offset: usize,
    pub logprob: Option<TokenLogprob>,
}

/// One sequence's whole output.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<Token>,
    pub finish_reason: Option<&'static str>,
    /// Zero for all but the first choice of a prompt, so summing gives `usage.prompt_tokens`.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Waits for every sequence of a non-streaming request.
pub async fn collect(runs: Vec<Run>) -> Result<Vec<Output>, ApiError> {
    let outs = futures_util::future::join_all(runs.into_iter().map(collect_one)).await;
    outs.into_iter().collect()
}

async fn collect_one(mut run: Run) -> Result<Output, ApiError> {
    let mut out = Output::default();
    let counts_prompt = run.first_of_prompt;
    while let Some(ev) = run.stream.next().await {
        match ev {
            Event::Token { id, text, logprob } => {
                run.tracker.token();
                if logprob.is_some() {
                    out.tokens.push(Token {
                        id,
                        offset: out.text.len(),
                        logprob,
                    });
                }
                out.text.push_str(&text);
            }
            Event::Finished {
                reason,
                text,
                usage,
                ..
            } => {
                out.text.push_str(&text);
                run.tracker
                    .finished(usage.prompt_tokens, usage.completion_tokens);
                out.finish_reason = Some(finish_str(reason));
                out.prompt_tokens = if counts_prompt {
                    usage.prompt_tokens
                } else {
                    0
                };
                out.completion_tokens = usage.completion_tokens;
                return Ok(out);
            }
            Event::Failed(msg) => {
                run.tracker.failed();
                return Err(ApiError::Internal(msg));
            }
        }
    }
    run.tracker.failed();
    Err(ApiError::Internal(
        "the engine dropped the request without finishing it".into(),
    ))
}

pub fn finish_str(r: FinishReason) -> &'static str {
    r.as_str()
}

/// One step of a merged stream, for the endpoint to format as SSE chunks.
#[derive(Debug)]
pub enum Item {
    /// Text (possibly empty when only a logprob is new) of choice `index`.
    Delta {
        index: usize,
        text: String,
        token: Option<Token>,
    },
    /// Choice `index` ended; `tail` is text released only at the end (usually empty).
    Finished {
        index: usize,
        tail: String,
        reason: &'static str,
    },
    /// Every choice ended: totals for the usage chunk.
    Done {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// A choice failed; the stream ends after it.
    Error(ApiError),
}

/// Merges the sequences of a streaming request into one stream of [`Item`]s, ending with
/// `Done` or `Error`. Dropping it drops every [`RequestStream`], cancelling what still runs.
pub fn merge(runs: Vec<Run>) -> BoxStream<'static, Item> {
    let mut trackers = Vec::with_capacity(runs.len());
    let mut merged: SelectAll<BoxStream<'static, (usize, Event)>> = SelectAll::new();
    for (slot, run) in runs.into_iter().enumerate() {
        let Run {
            index,
            first_of_prompt,
            stream,
            tracker,
        } = run;
        trackers.push(Slot {
            index,
            tracker,
            len: 0,
            first_of_prompt,
        });
        merged.push(
            stream::unfold(
                stream,
                |mut s| async move { s.next().await.map(|e| (e, s)) },
            )
            .map(move |e| (slot, e))
            .boxed(),
        );
    }
    let st = MergeState {
        merged,
        trackers,
        totals: (0, 0),
        done: false,
    };
    stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let item = st.next_item().await;
        Some((item, st))
    })
    .boxed()
}

/// One sequence of a merged stream.
struct Slot {
    index: usize,
    tracker: RequestTracker,
    /// Bytes of text so far (the next token's `text_offset`).
    len: usize,
    first_of_prompt: bool,
}

struct MergeState {
    merged: SelectAll<BoxStream<'static, (usize, Event)>>,
    trackers: Vec<Slot>,
    totals: (usize, usize),
    done: bool,
}

impl MergeState {
    async fn next_item(&mut self) -> Item {
        let Some((slot, ev)) = self.merged.next().await else {
            self.done = true;
            if self.trackers.iter().any(|t| !t.tracker.is_done()) {
                for t in self.trackers.iter_mut().filter(|t| !t.tracker.is_done()) {
                    t.tracker.failed();
                }
                return Item::Error(ApiError::Internal(
                    "the engine dropped a request without finishing it".into(),
                ));
            }
            return Item::Done {
                prompt_tokens: self.totals.0,
                completion_tokens: self.totals.1,
            };
        };
        let Slot {
            index,
            tracker,
            len,
            first_of_prompt,
        } = &mut self.trackers[slot];
        match ev {
            Event::Token { id, text, logprob } => {
                tracker.token();
                let token = logprob.is_some().then_some(Token {
                    id,
                    offset: *len,
                    logprob,
                });
                *len += text.len();
                Item::Delta {
                    index: *index,
                    text,
                    token,
                }
            }
            Event::Finished {
                reason,
                text,
                usage,
                ..
            } => {
                tracker.finished(usage.prompt_tokens, usage.completion_tokens);
                if *first_of_prompt {
                    self.totals.0 += usage.prompt_tokens;
                }
                self.totals.1 += usage.completion_tokens;
                Item::Finished {
                    index: *index,
                    tail: text,
                    reason: finish_str(reason),
                }
            }
            Event::Failed(msg) => {
                tracker.failed();
                self.done = true;
                Item::Error(ApiError::Internal(msg))
            }
        }
    }
}
