//! Repetition, frequency and presence penalties, with incremental bookkeeping.
//!
//! References: HF `RepetitionPenaltyLogitsProcessor` (prompt + generated, divide positive logits,
//! multiply negative ones) and the OpenAI parameter docs for frequency/presence penalties
//! (generated tokens only: `logit -= freq * count + presence * (count > 0)`).
//!
//! The state is updated from the tokens appended since the last call instead of recounting the
//! whole history every step (what HF's `gather`/`bincount` does): the cost per step is the number
//! of distinct penalised tokens, not the sequence length. Contract: the prompt is fixed and
//! `generated` only grows; if it shrinks or the prompt length changes the state is rebuilt.
//! Token ids at or past the logits length are ignored (they have no logit to penalise).

use std::collections::HashMap;

/// Penalty bookkeeping for one sequence. Only the structures an active penalty needs are filled.
#[derive(Debug, Clone)]
pub(crate) struct Penalties {
    repetition: f32,
    frequency: f32,
    presence: f32,
    /// Bitset over the vocabulary of tokens seen in prompt + generated (repetition penalty).
    seen_bits: Vec<u64>,
    /// The distinct ids set in `seen_bits`, in first-seen order, so applying is O(distinct).
    seen_list: Vec<u32>,
    /// Occurrences of each generated token (frequency / presence penalties).
    counts: HashMap<u32, u32>,
    prompt_len: usize,
    generated_len: usize,
}

impl Penalties {
    pub(crate) fn new(repetition: f32, frequency: f32, presence: f32, vocab_size: usize) -> Self {
        let bits = if repetition != 1.0 {
            vocab_size.div_ceil(64)
        } else {
            0
        };
        Penalties {
            repetition,
            frequency,
            presence,
            seen_bits: vec![0; bits],
            seen_list: Vec::new(),
            counts: HashMap::new(),
            prompt_len: 0,
            generated_len: 0,
        }
    }

    fn uses_repetition(&self) -> bool {
        self.repetition != 1.0
    }

    fn uses_counts(&self) -> bool {
        self.frequency != 0.0 || self.presence != 0.0
    }

    /// True when no penalty is active, so `apply` is a no-op.
    pub(crate) fn is_noop(&self) -> bool {
        !self.uses_repetition() && !self.uses_counts()
    }

    /// Forgets all history (a new sequence, or a history that was rewritten).
    pub(crate) fn reset(&mut self) {
        self.seen_bits.fill(0);
        self.seen_list.clear();
        self.counts.clear();
        self.prompt_len = 0;
        self.generated_len = 0;
    }

    fn mark_seen(&mut self, token: u32) {
        let (word, bit) = (token as usize / 64, token % 64);
        // Ids beyond the vocabulary have no logit; skipping them keeps the bitset fixed-size.
        if let Some(w) = self.seen_bits.get_mut(word) {
            if *w & (1 << bit) == 0 {
                *w |= 1 << bit;
                self.seen_list.push(token);
            }
        }
    }

    /// Absorbs the tokens appended since the last call.
    pub(crate) fn update(&mut self, prompt: &[u32], generated: &[u32]) {
        if self.is_noop() {
            return;
        }
        if prompt.len() != self.prompt_len || generated.len() < self.generated_len {
            self.reset();
        }
        if self.uses_repetition() {
            for &t in &prompt[self.prompt_len..] {
                self.mark_seen(t);
            }
        }
        for &t in &generated[self.generated_len..] {
            if self.uses_repetition() {
                self.mark_seen(t);
            }
            if self.uses_counts() {
                *self.counts.entry(t).or_insert(0) += 1;
            }
        }
        self.prompt_len = prompt.len();
        self.generated_len = generated.len();
    }

    /// Applies the penalties in place, repetition first (HF order, then OpenAI's).
    pub(crate) fn apply(&self, logits: &mut [f32]) {
        if self.uses_repetition() {
            let r = self.repetition;
            for &t in &self.seen_list {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 { *l * r } else { *l / r };
                }
            }
        }
        if self.uses_counts() {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= self.frequency * c as f32 + self.presence;
                }
            }
        }
    }
}
