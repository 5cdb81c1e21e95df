//! The serving engine's request-level API: many concurrent requests share one step loop on its
//! own thread (continuous batching, as vLLM's `LLMEngine`/`AsyncLLM`).
//!
//! [`EngineHandle::start`] spawns the loop; [`EngineHandle::submit`] queues a
//! [`GenerateRequest`] and returns a [`RequestStream`] of [`Event`]s: one `Token` per generated
//! token, then exactly one `Finished` (or one `Failed`). Dropping the stream cancels the request;
//! its KV memory is freed at the start of the next step. [`EngineHandle::shutdown`] stops
//! admitting, lets everything queued finish, and joins the thread.
//!
//! Each step runs one forward pass over every token kiln-sched planned (decodes first, then
//! prefill chunks up to `max_num_batched_tokens`; prefix-cache hits skipped; preemption by
//! recomputation when KV blocks run out), packed flat over the paged KV pool (kiln-kv block
//! tables, `kiln_nn::PagedKv`), and samples only the rows that end a sequence's pending tokens. Per-sequence sampling, detokenization and stop
//! strings are [`crate::sequence::SeqState`], the same code as [`crate::Engine::generate`], so a
//! request gives the same tokens and text whether it runs alone or batched.
//!
//! Invariants: every submitted request gets exactly one terminal event (`Finished` or `Failed`)
//! unless its stream was dropped first; per-request problems are a [`SubmitError`] at submit
//! time or a `Failed` event, never an engine failure.

mod collect;
mod handle;
pub(crate) mod memory;
mod step_loop;

pub use handle::{EngineHandle, RequestStream};
/// Element type of the paged KV cache: `F32`, or `Int8` with a scale per (position, kv head).
pub use kiln_nn::KvCacheDtype;
pub use memory::{kv_bytes_per_token, DEFAULT_KV_BYTES};

use crate::{FinishReason, SamplingParams, TokenLogprob};

/// At most this many alternatives per token (OpenAI's limit for `top_logprobs`).
pub const MAX_LOGPROBS: usize = 20;

/// How the engine batches and how much KV memory it may use.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block (vLLM's default 16).
    pub block_size: usize,
    /// Bytes of KV cache; `None`: enough for `max_num_seqs` sequences of the model's full
    /// context, capped at [`DEFAULT_KV_BYTES`] (1 GiB). Must hold at least one full context.
    pub kv_cache_memory: Option<usize>,
    pub kv_cache_dtype: KvCacheDtype,
    /// Tokens computed per step, decodes and prefill chunks together (the step's token budget).
    /// Must be at least `max_num_seqs` so every running sequence can decode each step.
    pub max_num_batched_tokens: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Requests queued but not yet running; beyond this `submit` returns `QueueFull`.
    pub max_waiting: usize,
    /// Reuse the KV blocks of a prompt prefix another request already computed.
    pub enable_prefix_caching: bool,
}

impl Default for EngineConfig {
    /// vLLM-like defaults scaled to a CPU: 16-token blocks, 512 tokens per step, 64 sequences.
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_cache_memory: None,
            kv_cache_dtype: KvCacheDtype::F32,
            max_num_batched_tokens: 512,
            max_num_seqs: 64,
            max_waiting: 1024,
            enable_prefix_caching: true,
        }
    }
}

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Scheduling priority: a **lower** value runs first (vLLM's convention); equal priorities
    /// run first come, first served. Under memory pressure the running sequence with the
    /// highest value (latest arrival among equals) is preempted first.
    pub priority: i32,
    /// Log-probabilities per generated token: `None` = none, `Some(0)` = the chosen token's
    /// only, `Some(n)` = also the `n` most likely alternatives (at most [`MAX_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

impl GenerateRequest {
    /// A request with priority 0 and no logprobs.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> GenerateRequest {
        GenerateRequest {
            prompt,
            params,
            priority: 0,
            logprobs: None,
        }
    }
}

/// Why [`EngineHandle::submit`] refused a request (nothing was queued).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine's queue is full; retry later")]
    QueueFull,
    #[error("the prompt has {n_tokens} tokens but the model's context is {max_context} tokens")]
    PromptTooLong { n_tokens: usize, max_context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{0}")]
    InvalidParams(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Token counts of a finished request (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

/// Wall-clock phases of one request, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestTimings {
    /// Submit to first scheduled step.
    pub queue_ms: f64,
    /// Submit to first generated token (time to first token).
    pub ttft_ms: f64,
    /// First token to finish.
    pub decode_ms: f64,
    /// Submit to finish.
    pub total_ms: f64,
}

/// What a [`RequestStream`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token. `text` is the new text it releases (empty while held back for a
    /// possible stop string or an incomplete UTF-8 character; the final token's event carries
    /// the released tail). End-of-sequence tokens produce no `Token` event.
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The request ended normally. `text` is output released only at the end with no token of
    /// its own (the held-back tail when the sequence ended on an end-of-sequence id); usually
    /// empty. The concatenation of every `Token::text` and this `text` is the full output.
    Finished {
        reason: FinishReason,
        text: String,
        usage: Usage,
        timings: RequestTimings,
    },
    /// The request could not be completed (a model error during its step); nothing follows.
    Failed(String),
}

/// A snapshot of the engine's counters (cumulative since start unless noted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences running now.
    pub running: usize,
    /// Requests queued now (including preempted ones waiting to be recomputed).
    pub waiting: usize,
    /// KV blocks of the pool: total, referenced by a sequence, and free (including blocks
    /// kept only for prefix-cache hits, which are reclaimed on demand).
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_free: usize,
    /// KV token slots reserved now (blocks used × block size) and holding a token now; their
    /// difference is the memory lost to partly filled blocks.
    pub kv_slots_allocated: usize,
    pub kv_slots_used: usize,
    /// Prompt tokens looked up in the prefix cache, and how many of them were hits.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Prompt tokens of admitted requests, and tokens generated.
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Running sequences evicted to free KV memory (to be recomputed).
    pub preemptions: u64,
    /// Forward steps run.
    pub steps: u64,
    pub finished_stop: u64,
    pub finished_length: u64,
    /// Streams dropped before the request finished.
    pub cancelled: u64,
    pub failed: u64,
}
