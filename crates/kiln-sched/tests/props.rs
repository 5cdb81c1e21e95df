//! Property tests: a simulated engine drives the scheduler through random workloads (arrivals
//! over time, shared prompt prefixes, cancellations, small pools that force preemption) and
//! checks every step and the end state.
//!
//! The "model" is a hash: the next token is a function of every token before it, so a
//! preemption that lost or reordered a token, or a prefix-cache hit on the wrong blocks, changes
//! the output. The simulated KV storage records which token sits in each (block, offset), and
//! every step checks that a sequence's computed positions still hold its own tokens.

use std::collections::HashMap;

use kiln_sched::{BlockPool, Scheduler, SchedulerConfig, SeqId};
use proptest::prelude::*;

fn next_token(tokens: &[u32]) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &t in tokens {
        h = (h ^ t as u64).wrapping_mul(0x100000001b3);
    }
    (h % 50) as u32
}

#[derive(Debug, Clone)]
struct Req {
    /// Index into the shared prefixes, and own tokens after it.
    prefix: usize,
    own: Vec<u32>,
    n_generate: usize,
    arrival: usize,
    priority: i32,
    cancel_at: Option<usize>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        0..3usize,
        prop::collection::vec(0..50u32, 1..20),
        1..12usize,
        0..15usize,
        0..3i32,
        prop::option::weighted(0.15, 0..40usize),
    )
        .prop_map(
            |(prefix, own, n_generate, arrival, priority, cancel_at)| Req {
                prefix,
                own,
                n_generate,
                arrival,
                priority,
                cancel_at,
            },
        )
}

#[derive(Debug, Clone)]
struct Setup {
    block_size: usize,
    n_blocks: usize,
    max_num_seqs: usize,
    budget: usize,
    prefix_caching: bool,
    fcfs: bool,
    reqs: Vec<Req>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1..6usize,
        4..40usize,
        1..8usize,
        0..24usize,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(req(), 1..14),
    )
        .prop_map(
            |(block_size, n_blocks, max_num_seqs, extra, prefix_caching, fcfs, reqs)| Setup {
                block_size,
                n_blocks,
                max_num_seqs,
                budget: max_num_seqs + extra,
                prefix_caching,
                fcfs,
                reqs,
            },
        )
}

/// Everything the simulation observed.
struct Outcome {
    outputs: HashMap<SeqId, Vec<u32>>,
    finished_at: HashMap<SeqId, usize>,
    cancelled: Vec<SeqId>,
    refused: Vec<SeqId>,
    first_admissions: Vec<SeqId>,
}

fn simulate(s: &Setup) -> Result<Outcome, TestCaseError> {
    let prefixes: Vec<Vec<u32>> = (0..3u32)
        .map(|p| (0..(3 + 5 * p)).map(|i| (i * 7 + p) % 50).collect())
        .collect();
    let pool = BlockPool::new(s.n_blocks, s.block_size, s.prefix_caching).unwrap();
    let cfg = SchedulerConfig {
        max_num_batched_tokens: s.budget,
        max_num_seqs: s.max_num_seqs,
        window: None,
    };
    let mut sched = Scheduler::new(cfg, pool).unwrap();
    let mut kv: HashMap<(u32, usize), u32> = HashMap::new();
    let mut out = Outcome {
        outputs: HashMap::new(),
        finished_at: HashMap::new(),
        cancelled: Vec::new(),
        refused: Vec::new(),
        first_admissions: Vec::new(),
    };
    let mut prompt_len: HashMap<SeqId, usize> = HashMap::new();
    let mut live: Vec<SeqId> = Vec::new();
    let max_arrival = s.reqs.iter().map(|r| r.arrival).max().unwrap_or(0);
    let total: usize = s
        .reqs
        .iter()
        .map(|r| prefixes[r.prefix].len() + r.own.len() + r.n_generate)
        .sum();
    // Liveness cap: generous for priorities (a sequence may be recomputed once per better one).
    let step_cap = max_arrival + total * (s.reqs.len() + 1) + 10;
    for step in 0..=step_cap {
        for (i, r) in s.reqs.iter().enumerate() {
            if r.arrival != step {
                continue;
            }
            let id = i as SeqId;
            let mut prompt = prefixes[r.prefix].clone();
            prompt.extend(&r.own);
            let max_len = prompt.len() + r.n_generate;
            let priority = if s.fcfs { 0 } else { r.priority };
            prompt_len.insert(id, prompt.len());
            match sched.add(id, prompt, priority, max_len) {
                Ok(()) => live.push(id),
                Err(kiln_sched::Error::NeverFits { .. }) => {
                    prop_assert!(max_len.div_ceil(s.block_size) > s.n_blocks);
                    out.refused.push(id);
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        for (i, r) in s.reqs.iter().enumerate() {
            let id = i as SeqId;
            if r.cancel_at == Some(step) && live.contains(&id) {
                sched.finish(id).unwrap();
                live.retain(|&l| l != id);
                out.cancelled.push(id);
            }
        }
        if live.is_empty() && step > max_arrival {
            return Ok(out);
        }
        let plan = sched.schedule();
        prop_assert!(plan.n_tokens() <= s.budget, "budget");
        prop_assert!(sched.running().len() <= s.max_num_seqs);
        for &a in &plan.admitted {
            if !out.first_admissions.contains(&a) {
                out.first_admissions.push(a);
            }
        }
        let mut seen = Vec::new();
        for p in &plan.seqs {
            prop_assert!(!seen.contains(&p.id), "planned twice");
            seen.push(p.id);
            prop_assert!(sched.is_running(p.id));
            prop_assert_eq!(sched.computed(p.id), Some(p.start));
            let tokens = sched.tokens(p.id).unwrap().to_vec();
            let table = sched.table(p.id).unwrap().blocks().to_vec();
            prop_assert!(sched.table(p.id).unwrap().n_tokens() >= p.start + p.len);
            prop_assert_eq!(p.samples, p.start + p.len == tokens.len());
            // The context this step attends to must still be this sequence's tokens.
            for (pos, &tok) in tokens.iter().enumerate().take(p.start) {
                let slot = (table[pos / s.block_size], pos % s.block_size);
                prop_assert_eq!(kv.get(&slot), Some(&tok), "seq {} pos {}", p.id, pos);
            }
            for (pos, &tok) in tokens.iter().enumerate().skip(p.start).take(p.len) {
                kv.insert((table[pos / s.block_size], pos % s.block_size), tok);
            }
        }
        for &w in sched.waiting() {
            prop_assert!(
                sched.table(w).unwrap().blocks().is_empty(),
                "waiting holds no blocks"
            );
        }
        check_refcounts(&sched)?;
        sched.step_done(&plan).unwrap();
        for p in plan.seqs.iter().filter(|p| p.samples) {
            let tokens = sched.tokens(p.id).unwrap();
            let next = next_token(tokens);
            let generated = tokens.len() + 1 - prompt_len[&p.id];
            if generated == s.reqs[p.id as usize].n_generate {
                let mut o = tokens[prompt_len[&p.id]..].to_vec();
                o.push(next);
                out.outputs.insert(p.id, o);
                out.finished_at.insert(p.id, step);
                sched.finish(p.id).unwrap();
                live.retain(|&l| l != p.id);
            } else {
                sched.append(p.id, next).unwrap();
            }
        }
    }
    Err(TestCaseError::fail(format!(
        "not done after {step_cap} steps: {} live",
        live.len()
    )))
}

fn check_refcounts(sched: &Scheduler) -> Result<(), TestCaseError> {
    let mut refs: HashMap<u32, u32> = HashMap::new();
    for &id in sched.running() {
        for &b in sched.table(id).unwrap().blocks() {
            *refs.entry(b).or_default() += 1;
        }
    }
    let pool = sched.pool();
    for b in 0..pool.n_blocks() as u32 {
        prop_assert_eq!(
            pool.refcount(b),
            refs.get(&b).copied().unwrap_or(0),
            "block {}",
            b
        );
    }
    let st = pool.stats();
    prop_assert_eq!(st.free + st.used + st.cached_evictable, st.n_blocks);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_request_finishes_or_is_cancelled_without_losing_a_token(s in setup()) {
        let prefixes: Vec<Vec<u32>> = (0..3u32)
            .map(|p| (0..(3 + 5 * p)).map(|i| (i * 7 + p) % 50).collect())
            .collect();
        let out = simulate(&s)?;
        for (i, r) in s.reqs.iter().enumerate() {
            let id = i as SeqId;
            if out.refused.contains(&id) || out.cancelled.contains(&id) {
                continue;
            }
            let mut tokens = prefixes[r.prefix].clone();
            tokens.extend(&r.own);
            let mut want = Vec::new();
            for _ in 0..r.n_generate {
                let t = next_token(&tokens);
                tokens.push(t);
                want.push(t);
            }
            prop_assert_eq!(out.outputs.get(&id), Some(&want), "request {}", i);
        }
    }

    /// FCFS: first admissions follow arrival order, and request k finishes within the work of
    /// the requests ranked before it (the best-ranked running sequence computes at least one
    /// token per step and is never preempted).
    #[test]
    fn fcfs_admits_in_order_and_bounds_every_wait(mut s in setup()) {
        s.fcfs = true;
        let out = simulate(&s)?;
        let mut order: Vec<SeqId> = (0..s.reqs.len() as SeqId)
            .filter(|id| !out.refused.contains(id))
            .collect();
        order.sort_by_key(|&id| (s.reqs[id as usize].arrival, id));
        let admitted: Vec<SeqId> = order
            .iter()
            .copied()
            .filter(|id| out.first_admissions.contains(id))
            .collect();
        prop_assert_eq!(&out.first_admissions, &admitted);
        let mut work = 0;
        let mut last_arrival = 0;
        for &id in &order {
            let r = &s.reqs[id as usize];
            let prefix_len = [3, 8, 13][r.prefix];
            work += prefix_len + r.own.len() + r.n_generate;
            last_arrival = last_arrival.max(r.arrival);
            if let Some(&done) = out.finished_at.get(&id) {
                prop_assert!(done <= last_arrival + work, "request {} done at {} > {}", id, done, last_arrival + work);
            }
        }
    }
}

#[test]
fn a_tiny_pool_forces_preemption_and_recomputation() {
    // Two sequences that cannot both hold their full length: the later one is preempted and
    // recomputed, and both produce the reference tokens.
    let s = Setup {
        block_size: 2,
        n_blocks: 8,
        max_num_seqs: 2,
        budget: 8,
        prefix_caching: false,
        fcfs: true,
        reqs: (0..2)
            .map(|i| Req {
                prefix: 0,
                own: vec![10 + i, 20, 30],
                n_generate: 8,
                arrival: 0,
                priority: 0,
                cancel_at: None,
            })
            .collect(),
    };
    let out = simulate(&s).unwrap();
    assert_eq!(out.outputs.len(), 2);
    // Re-run with the scheduler visible to count preemptions.
    let pool = BlockPool::new(8, 2, false).unwrap();
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 8,
        max_num_seqs: 2,
        window: None,
    };
    let mut sched = Scheduler::new(cfg, pool).unwrap();
    for id in 0..2 {
        sched.add(id, vec![1, 2, 3, 4, 5, 6], 0, 14).unwrap();
    }
    let mut preempted = false;
    for _ in 0..40 {
        let plan = sched.schedule();
        preempted |= !plan.preempted.is_empty();
        sched.step_done(&plan).unwrap();
        for p in plan.seqs.iter().filter(|p| p.samples) {
            if sched.tokens(p.id).unwrap().len() == 14 {
                sched.finish(p.id).unwrap();
            } else {
                sched.append(p.id, 7).unwrap();
            }
        }
    }
    assert!(preempted, "two 14-token sequences cannot share 16 slots");
    assert_eq!(sched.running().len() + sched.waiting().len(), 0);
    assert!(sched.preemptions() >= 1);
}

#[test]
fn errors_for_bad_input() {
    let pool = BlockPool::new(4, 4, true).unwrap();
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 2,
        max_num_seqs: 4,
        window: None,
    };
    assert!(matches!(
        Scheduler::new(cfg, pool.clone()),
        Err(kiln_sched::Error::Config(_))
    ));
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_num_batched_tokens: 8,
            max_num_seqs: 2,
            window: None,
        },
        pool,
    )
    .unwrap();
    assert_eq!(
        s.add(1, vec![], 0, 4),
        Err(kiln_sched::Error::EmptyPrompt { id: 1 })
    );
    assert!(matches!(
        s.add(1, vec![1], 0, 17),
        Err(kiln_sched::Error::NeverFits { .. })
    ));
    s.add(1, vec![1, 2], 0, 3).unwrap();
    assert_eq!(
        s.add(1, vec![1], 0, 2),
        Err(kiln_sched::Error::DuplicateId(1))
    );
    assert_eq!(
        s.append(1, 5),
        Err(kiln_sched::Error::NotSampling { id: 1 })
    );
    assert_eq!(s.finish(9), Err(kiln_sched::Error::UnknownId(9)));
}
