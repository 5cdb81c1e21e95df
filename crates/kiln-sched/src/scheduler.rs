//! [`Scheduler`]: the waiting and running queues over a kiln-kv [`BlockPool`]; see the crate
//! documentation for the policy.
//!
//! Why preemption takes the worst-ranked *running* sequence even when it is already planned this
//! step (its plan is withdrawn and its budget returned), as vLLM V1 does: choosing only among
//! unplanned sequences would let a low-rank decode planned early in the step force the best
//! sequence out, and then the best sequence could be preempted forever. With the worst always
//! going first, the best running sequence is never preempted (it alone always fits, checked by
//! [`Scheduler::add`]) and computes at least one token per step, which bounds every wait under
//! FCFS.

use std::collections::{HashMap, HashSet};

use kiln_kv::{BlockPool, BlockTable, PoolStats};

use crate::{Error, Result, SeqId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens computed per step, decodes and prefill chunks together.
    pub max_num_batched_tokens: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Every layer attends at most this many most recent positions (a sliding-window model):
    /// after each step, a sequence's blocks wholly before its next query's window are released.
    pub window: Option<usize>,
}

/// One sequence's share of a step: compute `tokens(id)[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub id: SeqId,
    pub start: usize,
    pub len: usize,
    /// The range ends at the last known token: sample the next one from its last row.
    pub samples: bool,
}

/// What [`Scheduler::schedule`] decided for one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Decodes first, then prefill chunks; each sequence at most once.
    pub seqs: Vec<Planned>,
    /// Sequences moved back to waiting this step (their KV freed; they will be recomputed).
    pub preempted: Vec<SeqId>,
    /// Sequences that started running this step.
    pub admitted: Vec<SeqId>,
}

impl StepPlan {
    pub fn n_tokens(&self) -> usize {
        self.seqs.iter().map(|p| p.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[derive(Debug)]
struct Seq {
    /// `(priority, arrival)`: lower runs first.
    rank: (i32, u64),
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    /// Leading tokens whose keys/values are in the table's blocks.
    computed: usize,
    max_len: usize,
    table: BlockTable,
    /// Positions served by the prefix cache at the first admission.
    cached_tokens: usize,
    admitted_once: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<SeqId, Seq>,
    /// Sorted by rank, both.
    waiting: Vec<SeqId>,
    running: Vec<SeqId>,
    arrivals: u64,
    preemptions: u64,
}

impl Scheduler {
    /// A scheduler owning `pool`. The budget must let every running sequence decode each step.
    pub fn new(cfg: SchedulerConfig, pool: BlockPool) -> Result<Scheduler> {
        if cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens < cfg.max_num_seqs {
            return Err(Error::Config(format!(
                "max_num_seqs {} must be at least 1 and max_num_batched_tokens {} at least \
                 max_num_seqs",
                cfg.max_num_seqs, cfg.max_num_batched_tokens
            )));
        }
        Ok(Scheduler {
            cfg,
            pool,
            seqs: HashMap::new(),
            waiting: Vec::new(),
            running: Vec::new(),
            arrivals: 0,
            preemptions: 0,
        })
    }

    /// Queues a sequence that may grow to `max_len` tokens (prompt + generation, at most the
    /// model's context). Refused if even an empty pool could not hold `max_len` tokens.
    pub fn add(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        priority: i32,
        max_len: usize,
    ) -> Result<()> {
        if self.seqs.contains_key(&id) {
            return Err(Error::DuplicateId(id));
        }
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt { id });
        }
        let max_len = max_len.max(prompt.len());
        let blocks = max_len.div_ceil(self.pool.block_size());
        if blocks > self.pool.n_blocks() {
            return Err(Error::NeverFits {
                id,
                max_len,
                blocks,
                n_blocks: self.pool.n_blocks(),
            });
        }
        let rank = (priority, self.arrivals);
        self.arrivals += 1;
        self.seqs.insert(
            id,
            Seq {
                rank,
                tokens: prompt,
                computed: 0,
                max_len,
                table: BlockTable::new(),
                cached_tokens: 0,
                admitted_once: false,
            },
        );
        self.insert_waiting(id);
        Ok(())
    }

    /// Plans one step (see the crate documentation). The planned sequences' tables are grown to
    /// hold their planned tokens before this returns.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut planned: HashSet<SeqId> = HashSet::new();
        for decodes in [true, false] {
            let ids: Vec<SeqId> = self.running.clone();
            for id in ids {
                if budget == 0 {
                    break;
                }
                let Some(s) = self.seqs.get(&id) else {
                    continue;
                };
                let pending = s.tokens.len() - s.computed;
                let is_running = self.running.contains(&id);
                if !is_running || planned.contains(&id) || pending == 0 || (pending == 1) != decodes
                {
                    continue;
                }
                let n = pending.min(budget);
                if self.make_room(id, n, &mut plan, &mut planned, &mut budget) {
                    let s = &self.seqs[&id];
                    plan.seqs.push(Planned {
                        id,
                        start: s.computed,
                        len: n,
                        samples: s.computed + n == s.tokens.len(),
                    });
                    planned.insert(id);
                    budget -= n;
                }
            }
        }
        if plan.preempted.is_empty() {
            self.admit(&mut plan, &mut budget);
        }
        plan
    }

    /// Grows `id`'s table for `n` more computed tokens, preempting the worst-ranked running
    /// sequences as needed. False if `id` itself had to be preempted.
    fn make_room(
        &mut self,
        id: SeqId,
        n: usize,
        plan: &mut StepPlan,
        planned: &mut HashSet<SeqId>,
        budget: &mut usize,
    ) -> bool {
        loop {
            let s = &self.seqs[&id];
            let grow = (s.computed + n).saturating_sub(s.table.n_tokens());
            if self.pool.can_grow(&s.table, grow) {
                let s = self.seqs.get_mut(&id).expect("id is running");
                self.pool
                    .grow(&mut s.table, grow)
                    .expect("can_grow said the blocks are there");
                return true;
            }
            let victim = *self.running.last().expect("id itself is running");
            if planned.remove(&victim) {
                if let Some(i) = plan.seqs.iter().position(|p| p.id == victim) {
                    *budget += plan.seqs.remove(i).len;
                }
            }
            self.preempt(victim);
            plan.preempted.push(victim);
            if victim == id {
                return false;
            }
        }
    }

    /// Frees a running sequence's blocks and puts it back in the waiting queue at its rank.
    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        let s = self.seqs.get_mut(&id).expect("a running sequence is known");
        self.pool.release(&mut s.table);
        s.computed = 0;
        self.preemptions += 1;
        self.insert_waiting(id);
    }

    fn admit(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.first() else {
                break;
            };
            let s = self.seqs.get_mut(&id).expect("a waiting sequence is known");
            let (mut table, cached) = self.pool.match_prefix(&s.tokens);
            let n = (s.tokens.len() - cached).min(*budget);
            let grow = (cached + n).saturating_sub(table.n_tokens());
            if !self.pool.can_grow(&table, grow) {
                // Head-of-line blocking on purpose: later arrivals must not overtake it.
                self.pool.release(&mut table);
                break;
            }
            self.pool
                .grow(&mut table, grow)
                .expect("can_grow said the blocks are there");
            s.table = table;
            s.computed = cached;
            if !s.admitted_once {
                s.admitted_once = true;
                s.cached_tokens = cached;
            }
            plan.seqs.push(Planned {
                id,
                start: cached,
                len: n,
                samples: cached + n == s.tokens.len(),
            });
            plan.admitted.push(id);
            *budget -= n;
            self.waiting.remove(0);
            self.insert_running(id);
        }
    }

    /// Records that the step's planned tokens were computed: computed counts advance and newly
    /// full blocks join the prefix cache. Sequences finished since `schedule` are skipped.
    pub fn step_done(&mut self, plan: &StepPlan) -> Result<()> {
        for p in &plan.seqs {
            let Some(s) = self.seqs.get_mut(&p.id) else {
                continue;
            };
            debug_assert_eq!(s.computed, p.start, "a plan is completed once");
            s.computed = p.start + p.len;
            self.pool.commit(&mut s.table, &s.tokens[..s.computed])?;
            if let Some(w) = self.cfg.window {
                // The next query sits at position `computed` and sees `computed + 1 - w ..`.
                self.pool
                    .release_before(&mut s.table, (s.computed + 1).saturating_sub(w));
            }
        }
        Ok(())
    }

    /// Appends the token sampled for `id` (which must have all its tokens computed).
    pub fn append(&mut self, id: SeqId, token: u32) -> Result<()> {
        let s = self.seqs.get_mut(&id).ok_or(Error::UnknownId(id))?;
        if s.computed != s.tokens.len() {
            return Err(Error::NotSampling { id });
        }
        if s.tokens.len() >= s.max_len {
            return Err(Error::PastMaxLen {
                id,
                len: s.tokens.len(),
            });
        }
        s.tokens.push(token);
        Ok(())
    }

    /// Removes a sequence (finished or cancelled), waiting or running, freeing its blocks.
    pub fn finish(&mut self, id: SeqId) -> Result<()> {
        let mut s = self.seqs.remove(&id).ok_or(Error::UnknownId(id))?;
        self.pool.release(&mut s.table);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        Ok(())
    }

    fn insert_waiting(&mut self, id: SeqId) {
        let rank = self.seqs[&id].rank;
        let at = self.waiting.partition_point(|w| self.seqs[w].rank < rank);
        self.waiting.insert(at, id);
    }

    fn insert_running(&mut self, id: SeqId) {
        let rank = self.seqs[&id].rank;
        let at = self.running.partition_point(|r| self.seqs[r].rank < rank);
        self.running.insert(at, id);
    }

    /// The block table of a sequence (empty while it waits).
    pub fn table(&self, id: SeqId) -> Option<&BlockTable> {
        self.seqs.get(&id).map(|s| &s.table)
    }

    /// Prompt and generated tokens of a sequence.
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    /// Tokens whose keys/values are computed.
    pub fn computed(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.computed)
    }

    /// Prompt positions the prefix cache served at the sequence's first admission.
    pub fn cached_tokens(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.cached_tokens)
    }

    pub fn is_running(&self, id: SeqId) -> bool {
        self.running.contains(&id)
    }

    /// Running sequences, best rank first.
    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    /// Waiting sequences, best rank first.
    pub fn waiting(&self) -> &[SeqId] {
        &self.waiting
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    pub fn config(&self) -> SchedulerConfig {
        self.cfg
    }
}
