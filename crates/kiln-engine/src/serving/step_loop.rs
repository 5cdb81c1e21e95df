//! The step loop on the engine thread: intake -> drop cancelled -> schedule (kiln-sched) -> one
//! packed forward over the paged KV pool -> sample -> stream events -> publish stats, until
//! shutdown with nothing left.
//!
//! The scheduler owns the block ids (kiln-kv) and decides each step's token ranges: decodes
//! first, then prefill chunks up to `max_num_batched_tokens`, with prefix-cache hits skipped and
//! preemption by recomputation when blocks run out. This loop owns what needs tensors or text:
//! the [`PagedKvPool`] the block ids index, and each request's [`SeqState`] (sampler,
//! detokenizer, stop strings) and event channel. A preempted sequence keeps its `SeqState`, so
//! its sampler, text and stop-string state continue exactly where they were; only its keys and
//! values are recomputed.

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;

use kiln_nn::DECODE_MAX_QUERIES;
use kiln_nn::{Batch, PagedKv, PagedKvPool, SeqSpan};
use kiln_sched::{BlockPool, Scheduler, SchedulerConfig, StepPlan};
use tokio::sync::mpsc::UnboundedSender;

use super::handle::{Pending, Shared};
use super::{memory, EngineConfig, Event, RequestTimings, Usage};
use crate::sequence::SeqState;
use crate::{Engine, Error, FinishReason, Result};

/// Checks `cfg` against the model; returns the number of KV blocks to allocate.
pub(super) fn check_config(engine: &Engine, cfg: &EngineConfig) -> Result<usize> {
    let bad = |msg: String| Err(Error::InvalidArgument(msg));
    if cfg.block_size == 0 || cfg.max_num_seqs == 0 || cfg.max_waiting == 0 {
        return bad("block_size, max_num_seqs and max_waiting must be at least 1".into());
    }
    if cfg.max_num_batched_tokens < cfg.max_num_seqs {
        return bad(format!(
            "max_num_batched_tokens ({}) must be at least max_num_seqs ({}) so every running \
             sequence can decode in each step",
            cfg.max_num_batched_tokens, cfg.max_num_seqs
        ));
    }
    memory::n_blocks(engine, cfg)
}

/// A request the scheduler knows about (waiting or running).
struct Seq<'e> {
    state: SeqState<'e>,
    tx: UnboundedSender<Event>,
    arrival: Instant,
    started: Option<Instant>,
    first_token: Option<Instant>,
    cached_tokens: usize,
}

/// Sets `exited` when the loop returns or unwinds, so `shutdown` never waits forever.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.inbox().exited = true;
        self.0.wake.notify_all();
    }
}

struct Loop<'e> {
    engine: &'e Engine,
    shared: &'e Shared,
    sched: Scheduler,
    kv: PagedKvPool,
    seqs: HashMap<u64, Seq<'e>>,
}

pub(super) fn run(engine: &Engine, cfg: &EngineConfig, n_blocks: usize, shared: &Shared) {
    let _exit = ExitGuard(shared);
    let started = (|| -> Result<Loop<'_>> {
        let blocks = BlockPool::new(n_blocks, cfg.block_size, cfg.enable_prefix_caching)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let sched_cfg = SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            window: engine.model.kv_window(),
        };
        Ok(Loop {
            engine,
            shared,
            sched: Scheduler::new(sched_cfg, blocks)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            kv: memory::pool(engine, cfg, n_blocks)?,
            seqs: HashMap::new(),
        })
    })();
    // `check_config` validated everything these constructors check.
    let mut l = started.expect("configuration checked by EngineHandle::start");
    l.publish();
    while let Some(new) = intake(shared, l.seqs.is_empty()) {
        for p in new {
            l.add(p);
        }
        l.drop_cancelled();
        let plan = l.sched.schedule();
        if !plan.is_empty() {
            l.step(&plan);
        }
        l.publish();
    }
}

/// New requests; blocks while there is nothing to do. `None`: shut down with nothing left.
fn intake(shared: &Shared, idle: bool) -> Option<Vec<Pending>> {
    let mut inbox = shared.inbox();
    loop {
        if !inbox.new.is_empty() || !idle {
            return Some(std::mem::take(&mut inbox.new));
        }
        if inbox.shutting_down {
            return None;
        }
        inbox = shared.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
    }
}

impl<'e> Loop<'e> {
    fn add(&mut self, p: Pending) {
        let e = self.engine;
        let max_context = e.info.max_context;
        let max_len = (p.req.prompt.len() + p.req.params.max_tokens).min(max_context);
        let state = SeqState::new(
            &e.tokenizer,
            e.eos_ids(),
            p.req.prompt.clone(),
            &p.req.params,
            p.req.logprobs,
            e.info.vocab_size,
            max_context,
        )
        .and_then(|state| {
            self.sched
                .add(p.id, p.req.prompt, p.req.priority, max_len)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            Ok(state)
        });
        match state {
            Ok(state) => {
                self.seqs.insert(
                    p.id,
                    Seq {
                        state,
                        tx: p.tx,
                        arrival: p.arrival,
                        started: None,
                        first_token: None,
                        cached_tokens: 0,
                    },
                );
            }
            Err(err) => {
                self.shared.stats().failed += 1;
                let _ = p.tx.send(Event::Failed(err.to_string()));
            }
        }
    }

    /// Requests whose stream was dropped leave now, freeing their blocks for this step.
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        if !gone.is_empty() {
            self.shared.stats().cancelled += gone.len() as u64;
        }
    }

    fn remove(&mut self, id: u64) {
        self.seqs.remove(&id);
        // Unknown only if already removed; nothing else to free then.
        let _ = self.sched.finish(id);
    }

    fn step(&mut self, plan: &StepPlan) {
        let now = Instant::now();
        {
            let mut stats = self.shared.stats();
            stats.preemptions += plan.preempted.len() as u64;
            stats.steps += 1;
            for &id in &plan.admitted {
                let Some(s) = self.seqs.get_mut(&id) else {
                    continue;
                };
                if s.started.is_none() {
                    s.started = Some(now);
                    s.cached_tokens = self.sched.cached_tokens(id).unwrap_or(0);
                    stats.prompt_tokens += s.state.prompt().len() as u64;
                }
            }
        }
        match self.forward(plan) {
            Ok(logits) => {
                if let Err(e) = self.sched.step_done(plan) {
                    self.fail(plan, &e.to_string());
                    return;
                }
                self.sample(plan, logits);
            }
            Err(e) => self.fail(plan, &format!("forward pass failed: {e}")),
        }
    }

    /// One forward over every planned token; logits `(n_sampling, vocab)` for the planned
    /// sequences that sample, in plan order.
    fn forward(&mut self, plan: &StepPlan) -> Result<Vec<f32>> {
        let n_tokens = plan.n_tokens();
        let mut ids = Vec::with_capacity(n_tokens);
        let mut positions = Vec::with_capacity(n_tokens);
        let mut seqs = Vec::with_capacity(plan.seqs.len());
        let mut rows = Vec::new();
        let mut tables = Vec::with_capacity(plan.seqs.len());
        let mut cached = Vec::with_capacity(plan.seqs.len());
        let mut prompt_rows = Vec::with_capacity(plan.seqs.len());
        for p in &plan.seqs {
            let tokens = self
                .sched
                .tokens(p.id)
                .expect("a planned sequence is known");
            let range = p.start..p.start + p.len;
            seqs.push(SeqSpan {
                start: ids.len(),
                len: p.len,
            });
            ids.extend_from_slice(&tokens[range.clone()]);
            positions.extend(range);
            if p.samples {
                rows.push((ids.len() - 1) as u32);
            }
            tables.push(
                self.sched
                    .table(p.id)
                    .expect("a planned sequence has a table")
                    .blocks(),
            );
            cached.push(p.start);
            // A chunk of a prompt that a one-shot prefill would run through the blocked
            // attention path runs through it too, however short the chunk (batch invariance).
            let prompt_len = self.seqs.get(&p.id).map_or(0, |s| s.state.prompt().len());
            prompt_rows.push(prompt_len > DECODE_MAX_QUERIES && p.start + p.len <= prompt_len);
        }
        let batch = Batch::new(positions, seqs);
        let mut kv = PagedKv::new(&mut self.kv, tables, cached, &batch)
            .map_err(kiln_models::Error::from)?
            .prompt_rows(prompt_rows);
        let logits = self.engine.forward_rows(&ids, &batch, &mut kv, &rows)?;
        Ok(logits.into_f32_vec())
    }

    /// Samples each sampling sequence of the plan and streams its events. Sequences sample in
    /// parallel (each has its own parameters and random state, so the order does not matter);
    /// their tokens are then appended in plan order.
    fn sample(&mut self, plan: &StepPlan, mut logits: Vec<f32>) {
        let vocab = self.engine.info.vocab_size;
        let slot: HashMap<u64, usize> = plan
            .seqs
            .iter()
            .filter(|p| p.samples)
            .enumerate()
            .map(|(i, p)| (p.id, i))
            .collect();
        let mut rows: Vec<Option<&mut [f32]>> = logits.chunks_exact_mut(vocab).map(Some).collect();
        let mut work: Vec<(usize, u64, &mut Seq<'e>, &mut [f32])> = self
            .seqs
            .iter_mut()
            .filter_map(|(&id, s)| {
                let i = *slot.get(&id)?;
                Some((i, id, s, rows.get_mut(i)?.take()?))
            })
            .collect();
        let shared = self.shared;
        let mut next: Vec<(usize, u64, Option<u32>)> = work
            .par_iter_mut()
            .map(|(i, id, s, row)| (*i, *id, sample_one(shared, s, row)))
            .collect();
        next.sort_unstable_by_key(|&(i, _, _)| i);
        for (_, id, token) in next {
            // `Some(token)`: append it and continue; `None`: the sequence is done.
            match token {
                Some(token) => {
                    if let Err(e) = self.sched.append(id, token) {
                        if let Some(s) = self.seqs.get(&id) {
                            let _ = s.tx.send(Event::Failed(e.to_string()));
                        }
                        self.shared.stats().failed += 1;
                        self.remove(id);
                    }
                }
                None => self.remove(id),
            }
        }
    }

    /// Fails every sequence of the plan (their KV may be half written).
    fn fail(&mut self, plan: &StepPlan, msg: &str) {
        for p in &plan.seqs {
            if let Some(s) = self.seqs.get(&p.id) {
                let _ = s.tx.send(Event::Failed(msg.to_string()));
                self.shared.stats().failed += 1;
            }
            self.remove(p.id);
        }
    }

    fn publish(&self) {
        let pool = self.sched.pool_stats();
        let waiting = self.sched.waiting().len();
        {
            let mut inbox = self.shared.inbox();
            inbox.waiting = inbox.new.len() + waiting;
        }
        let mut stats = self.shared.stats();
        stats.running = self.sched.running().len();
        stats.waiting = waiting;
        stats.kv_blocks_total = pool.n_blocks;
        stats.kv_blocks_used = pool.used;
        stats.kv_blocks_free = pool.free + pool.cached_evictable;
        stats.kv_slots_allocated = pool.slots_allocated;
        stats.kv_slots_used = pool.slots_filled;
        stats.prefix_cache_queries = pool.prefix_query_tokens;
        stats.prefix_cache_hits = pool.prefix_hit_tokens;
    }
}

/// Samples one sequence's next token from its logits row and sends its events; the token to
/// append, or `None` when the sequence finished or failed.
fn sample_one(shared: &Shared, s: &mut Seq<'_>, row: &mut [f32]) -> Option<u32> {
    let now = Instant::now();
    let out = match s.state.accept_logits(row) {
        Ok(out) => out,
        Err(e) => {
            let _ = s.tx.send(Event::Failed(e.to_string()));
            shared.stats().failed += 1;
            return None;
        }
    };
    s.first_token.get_or_insert(now);
    let mut stats = shared.stats();
    let mut tail = String::new();
    match out.id {
        Some(id) => {
            stats.generated_tokens += 1;
            let _ = s.tx.send(Event::Token {
                id,
                text: out.text,
                logprob: out.logprob,
            });
        }
        None => tail = out.text,
    }
    let Some(reason) = out.finish else {
        // Only an end-of-sequence id has no `id`, and it always finishes.
        return out.id;
    };
    match reason {
        FinishReason::Stop => stats.finished_stop += 1,
        FinishReason::Length => stats.finished_length += 1,
    }
    drop(stats);
    let _ = s.tx.send(Event::Finished {
        reason,
        text: tail,
        usage: Usage {
            prompt_tokens: s.state.prompt().len(),
            completion_tokens: s.state.generated().len(),
            cached_tokens: s.cached_tokens,
        },
        timings: timings(s, now),
    });
    None
}

fn timings(s: &Seq<'_>, now: Instant) -> RequestTimings {
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let first = s.first_token.unwrap_or(now);
    let started = s.started.unwrap_or(now);
    RequestTimings {
        queue_ms: ms(s.arrival, started),
        ttft_ms: ms(s.arrival, first),
        decode_ms: ms(first, now),
        total_ms: ms(s.arrival, now),
    }
}
