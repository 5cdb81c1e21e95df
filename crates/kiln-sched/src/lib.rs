//! kiln-sched: the continuous-batching scheduler of the serving engine. Token ids and block ids
//! only — no tensors, no model: the engine runs what [`Scheduler::schedule`] plans.
//!
//! Reference: vLLM's V1 `Scheduler` (one token budget per step shared by decodes and prefill
//! chunks; a request is "`num_computed_tokens` out of `num_tokens`", with no separate prefill
//! phase) and its priority policy; PagedAttention's preemption by recomputation (Kwon et al.,
//! SOSP 2023).
//!
//! # A step
//! 1. **Running sequences, decodes first.** Every running sequence with one pending token (a
//!    decode) is planned for one token, best rank first; then sequences with more pending
//!    tokens (a prompt, or a recomputation after preemption) get chunks of at most what is left
//!    of `max_num_batched_tokens` (chunked prefill).
//! 2. **Preemption.** When a planned sequence needs a KV block and the pool has none, the
//!    worst-ranked running sequence not yet planned this step (possibly the one asking) is
//!    preempted: its blocks are freed and it goes back to the waiting queue, where its rank puts
//!    it ahead of every later arrival of its priority. Its prompt and generated tokens become the
//!    tokens to recompute (prefix-cache hits usually make that cheap); nothing is lost.
//! 3. **Admission**, only if nothing was preempted this step: waiting sequences, best rank
//!    first, while fewer than `max_num_seqs` run and budget remains. A sequence first takes the
//!    longest cached prefix of its tokens (those positions need no compute), then needs blocks
//!    for its first chunk; if they are not there, admission stops (strict rank order: a large
//!    request is never overtaken by smaller later ones, so it cannot starve under FCFS).
//!
//! Rank: lower `priority` first, then earlier arrival. With equal priorities that is FCFS.
//!
//! # The engine's side of the protocol
//! ```text
//! sched.add(id, prompt, priority, max_len)?;
//! loop {
//!     let plan = sched.schedule();           // tables already grown for the planned tokens
//!     // forward over plan.seqs: sched.tokens(id)[range], KV into sched.table(id)
//!     sched.step_done(&plan)?;               // computed counts advance, full blocks cached
//!     for each planned seq with `samples`: sched.append(id, token) or sched.finish(id)
//! }
//! ```
//! Invariants: a sequence is either waiting (holding no blocks) or running (holding blocks for
//! at least its computed tokens); every planned range starts at the sequence's computed count;
//! the planned tokens of a step never exceed the budget; a sequence leaves only by `finish`.

mod scheduler;

pub use kiln_kv::{BlockPool, BlockTable, PoolStats};
pub use scheduler::{Planned, Scheduler, SchedulerConfig, StepPlan};

/// Engine-chosen id of a request.
pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("sequence {0} is already scheduled")]
    DuplicateId(SeqId),
    #[error("sequence {0} is unknown (finished or never added)")]
    UnknownId(SeqId),
    #[error("sequence {id} has no tokens")]
    EmptyPrompt { id: SeqId },
    #[error(
        "sequence {id} may grow to {max_len} tokens ({blocks} blocks) but the KV pool has only \
         {n_blocks} blocks"
    )]
    NeverFits {
        id: SeqId,
        max_len: usize,
        blocks: usize,
        n_blocks: usize,
    },
    #[error("sequence {id} already holds {len} tokens, its maximum")]
    PastMaxLen { id: SeqId, len: usize },
    #[error("sequence {id} is not waiting for a sampled token")]
    NotSampling { id: SeqId },
    #[error("invalid scheduler configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Kv(#[from] kiln_kv::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
