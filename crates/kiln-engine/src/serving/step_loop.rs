//! The step loop on the engine thread: intake -> drop cancelled -> admit -> plan -> one packed
//! forward -> sample -> stream events -> publish stats, until shutdown with nothing left.
//!
//! This version keeps each sequence's KV in its own contiguous [`KvCache`] (packed into one
//! forward through [`SeqCaches`]), so admission is bounded by `max_num_seqs` only and nothing
//! is ever preempted. Planning follows vLLM's V1 scheduler: every decoding sequence gets its one
//! token first, then sequences still prefilling get chunks, in admission order, until the step's
//! token budget is spent (chunked prefill). Admission order is priority (lower first), then
//! arrival.

use std::time::Instant;

use kiln_nn::{Batch, KvCache, SeqCaches, SeqSpan};
use tokio::sync::mpsc::UnboundedSender;

use super::handle::{Pending, Shared};
use super::{EngineConfig, Event, KvCacheDtype, RequestTimings, Usage};
use crate::sequence::SeqState;
use crate::{Engine, Error, FinishReason, Result};

/// Rejects a configuration the loop cannot run with.
pub(super) fn check_config(engine: &Engine, cfg: &EngineConfig) -> Result<()> {
    let bad = |msg: String| Err(Error::InvalidArgument(msg));
    if engine.model.as_encoder().is_some() {
        return bad(format!(
            "{} is an encoder-only model: it cannot generate",
            engine.info.architecture
        ));
    }
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
    if cfg.kv_cache_dtype != KvCacheDtype::F32 {
        return bad(format!(
            "kv_cache_dtype {:?}: the contiguous KV caches hold f32 only",
            cfg.kv_cache_dtype
        ));
    }
    Ok(())
}

/// A running sequence.
struct Seq<'e> {
    state: SeqState<'e>,
    cache: KvCache,
    /// Prompt then generated ids: everything the model is fed.
    tokens: Vec<u32>,
    /// Leading `tokens` whose keys/values are in `cache`.
    computed: usize,
    tx: UnboundedSender<Event>,
    arrival: Instant,
    started: Instant,
    first_token: Option<Instant>,
}

/// Sets `exited` when the loop returns or unwinds, so `shutdown` never waits forever.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.inbox().exited = true;
        self.0.wake.notify_all();
    }
}

pub(super) fn run(engine: &Engine, cfg: &EngineConfig, shared: &Shared) {
    let _exit = ExitGuard(shared);
    let mut waiting: Vec<Pending> = Vec::new();
    let mut running: Vec<Seq<'_>> = Vec::new();
    loop {
        let Some(new) = intake(shared, running.is_empty() && waiting.is_empty()) else {
            return;
        };
        for p in new {
            // Sorted by (priority, id): ids grow with arrival, so equal priorities stay FCFS.
            let key = (p.req.priority, p.id);
            let at = waiting.partition_point(|w| (w.req.priority, w.id) < key);
            waiting.insert(at, p);
        }
        drop_cancelled(shared, &mut running, &mut waiting);
        admit(engine, cfg, shared, &mut running, &mut waiting);
        if running.is_empty() {
            continue;
        }
        let plan = plan(&running, cfg.max_num_batched_tokens);
        let sampled = forward(engine, &mut running, &plan);
        let done = match sampled {
            Ok(rows) => sample(shared, &mut running, rows),
            Err(e) => fail_all(shared, &running, &plan, &e),
        };
        remove(&mut running, done);
        publish(shared, &running);
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

fn drop_cancelled(shared: &Shared, running: &mut Vec<Seq<'_>>, waiting: &mut Vec<Pending>) {
    let before = (running.len(), waiting.len());
    running.retain(|s| !s.tx.is_closed());
    waiting.retain(|p| !p.tx.is_closed());
    let gone_waiting = before.1 - waiting.len();
    let cancelled = before.0 - running.len() + gone_waiting;
    if cancelled > 0 {
        shared.inbox().waiting -= gone_waiting;
        shared.stats().cancelled += cancelled as u64;
    }
}

fn admit<'e>(
    engine: &'e Engine,
    cfg: &EngineConfig,
    shared: &Shared,
    running: &mut Vec<Seq<'e>>,
    waiting: &mut Vec<Pending>,
) {
    let n = waiting
        .len()
        .min(cfg.max_num_seqs.saturating_sub(running.len()));
    if n == 0 {
        return;
    }
    shared.inbox().waiting -= n;
    let now = Instant::now();
    for p in waiting.drain(..n) {
        let state = SeqState::new(
            &engine.tokenizer,
            engine.eos_ids(),
            p.req.prompt.clone(),
            &p.req.params,
            p.req.logprobs,
            engine.info.vocab_size,
            engine.info.max_context,
        );
        match state {
            Ok(state) => {
                shared.stats().prompt_tokens += p.req.prompt.len() as u64;
                running.push(Seq {
                    state,
                    cache: engine.model.new_cache(),
                    tokens: p.req.prompt,
                    computed: 0,
                    tx: p.tx,
                    arrival: p.arrival,
                    started: now,
                    first_token: None,
                })
            }
            Err(e) => {
                shared.stats().failed += 1;
                let _ = p.tx.send(Event::Failed(e.to_string()));
            }
        }
    }
}

/// `(index into running, tokens to compute)`: decodes first, then prefill chunks in admission
/// order until `budget` tokens are planned.
fn plan(running: &[Seq<'_>], budget: usize) -> Vec<(usize, usize)> {
    let mut plan = Vec::with_capacity(running.len());
    let mut left = budget;
    for (i, s) in running.iter().enumerate() {
        if s.tokens.len() - s.computed == 1 && left > 0 {
            plan.push((i, 1));
            left -= 1;
        }
    }
    for (i, s) in running.iter().enumerate() {
        let pending = s.tokens.len() - s.computed;
        if pending > 1 && left > 0 {
            let n = pending.min(left);
            plan.push((i, n));
            left -= n;
        }
    }
    plan
}

/// Runs one packed forward over the plan; returns `(index into running, logits row)` for every
/// sequence whose pending tokens are all computed now (it samples its next token).
fn forward(
    engine: &Engine,
    running: &mut [Seq<'_>],
    plan: &[(usize, usize)],
) -> Result<Vec<(usize, Vec<f32>)>> {
    let n_tokens: usize = plan.iter().map(|&(_, n)| n).sum();
    let mut ids = Vec::with_capacity(n_tokens);
    let mut positions = Vec::with_capacity(n_tokens);
    let mut spans = Vec::with_capacity(plan.len());
    let mut rows = Vec::new();
    let mut sampling = Vec::new();
    for &(i, n) in plan {
        let s = &running[i];
        spans.push(SeqSpan {
            start: ids.len(),
            len: n,
        });
        ids.extend_from_slice(&s.tokens[s.computed..s.computed + n]);
        positions.extend(s.computed..s.computed + n);
        if s.computed + n == s.tokens.len() {
            rows.push((ids.len() - 1) as u32);
            sampling.push(i);
        }
    }
    let batch = Batch {
        positions,
        seqs: spans,
    };
    let mut slots: Vec<Option<&mut KvCache>> =
        running.iter_mut().map(|s| Some(&mut s.cache)).collect();
    let caches = plan
        .iter()
        .map(|&(i, _)| slots[i].take().expect("a sequence is planned at most once"))
        .collect();
    let logits = engine.forward_rows(&ids, &batch, &mut SeqCaches(caches), &rows)?;
    for &(i, n) in plan {
        running[i].computed += n;
    }
    let vocab = engine.info.vocab_size;
    let logits = logits.into_f32_vec();
    Ok(sampling
        .into_iter()
        .zip(logits.chunks_exact(vocab))
        .map(|(i, row)| (i, row.to_vec()))
        .collect())
}

/// Samples each row's sequence and streams its events; returns the indices that finished.
fn sample(shared: &Shared, running: &mut [Seq<'_>], rows: Vec<(usize, Vec<f32>)>) -> Vec<usize> {
    let mut done = Vec::new();
    let mut stats = shared.stats();
    stats.steps += 1;
    for (i, mut logits) in rows {
        let s = &mut running[i];
        let now = Instant::now();
        let out = match s.state.accept_logits(&mut logits) {
            Ok(out) => out,
            Err(e) => {
                let _ = s.tx.send(Event::Failed(e.to_string()));
                stats.failed += 1;
                done.push(i);
                continue;
            }
        };
        s.first_token.get_or_insert(now);
        let mut tail = String::new();
        match out.id {
            Some(id) => {
                s.tokens.push(id);
                stats.generated_tokens += 1;
                let _ = s.tx.send(Event::Token {
                    id,
                    text: out.text,
                    logprob: out.logprob,
                });
            }
            None => tail = out.text,
        }
        if let Some(reason) = out.finish {
            match reason {
                FinishReason::Stop => stats.finished_stop += 1,
                FinishReason::Length => stats.finished_length += 1,
            }
            let _ = s.tx.send(Event::Finished {
                reason,
                text: tail,
                usage: Usage {
                    prompt_tokens: s.state.prompt().len(),
                    completion_tokens: s.state.generated().len(),
                    cached_tokens: 0,
                },
                timings: timings(s, now),
            });
            done.push(i);
        }
    }
    done
}

fn timings(s: &Seq<'_>, now: Instant) -> RequestTimings {
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let first = s.first_token.unwrap_or(now);
    RequestTimings {
        queue_ms: ms(s.arrival, s.started),
        ttft_ms: ms(s.arrival, first),
        decode_ms: ms(first, now),
        total_ms: ms(s.arrival, now),
    }
}

/// A failed forward pass fails every sequence it carried (their caches may be half written).
fn fail_all(
    shared: &Shared,
    running: &[Seq<'_>],
    plan: &[(usize, usize)],
    e: &Error,
) -> Vec<usize> {
    let msg = format!("forward pass failed: {e}");
    for &(i, _) in plan {
        let _ = running[i].tx.send(Event::Failed(msg.clone()));
    }
    shared.stats().failed += plan.len() as u64;
    plan.iter().map(|&(i, _)| i).collect()
}

fn remove(running: &mut Vec<Seq<'_>>, mut done: Vec<usize>) {
    done.sort_unstable();
    for i in done.into_iter().rev() {
        running.remove(i);
    }
}

fn publish(shared: &Shared, running: &[Seq<'_>]) {
    let used: usize = running.iter().map(|s| s.cache.len()).sum();
    let mut stats = shared.stats();
    stats.running = running.len();
    stats.kv_slots_used = used;
    stats.kv_slots_allocated = used;
}
