//! Token sampling: from one sequence's logits to the next token id.
//!
//! Pure logic over a `&mut [f32]` of logits (no tensors). The order of operations is that of
//! transformers' `generate` logits processors and warpers
//! (`generation/logits_process.py`): repetition penalty, then frequency/presence penalties, then
//! temperature, top-k, top-p, min-p, and a draw from the softmax of what is left. Temperature 0 is
//! greedy: the argmax after penalties, lowest id on ties (NaN logits never win).
//!
//! Semantics kept from HF where they are observable:
//! - top-k keeps every token tied with the k-th largest value (`scores < topk[-1]` is removed);
//! - top-p keeps a token iff the mass of the tokens strictly ahead of it (descending probability,
//!   ties by lower id) is `< top_p`, so at least one token always survives;
//! - min-p keeps `p >= min_p * p_max` over the tokens that survived top-p.
//!
//! Deviations, all for speed and none observable beyond float rounding:
//! - temperature is applied while copying logits into the candidate buffer, so `logits` is left
//!   holding the *penalised, unscaled* logits (useful for logprobs);
//! - top-k uses `select_nth_unstable` (O(V)) instead of sorting the vocabulary; top-p finds its
//!   cut by a quickselect on cumulative mass (expected O(V)) instead of a sort and cumsum;
//! - min-p is applied before the top-p walk: both keep a prefix of the descending order and
//!   min-p's test (`s >= s_max + ln(min_p)`) does not depend on renormalisation, so the
//!   intersection is the same, and top-p then sorts fewer candidates. Top-p's mass is still
//!   measured against the pre-min-p total, as in HF.
//!
//! Invariant: after warm-up a call allocates nothing; the candidate buffer is reused.

mod params;
mod penalties;
#[cfg(test)]
mod tests;

pub use params::{SamplingError, SamplingParams};

use penalties::Penalties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;

/// One surviving token: its id, its temperature-scaled logit and, once computed, its
/// unnormalised weight `exp(s - s_max)`.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    weight: f32,
}

/// Descending logit, then ascending id: a total order, so results never depend on how
/// `select_nth_unstable` happened to permute ties.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Below this many undecided candidates top-p sorts and walks instead of splitting further.
const TOP_P_SORT_BELOW: usize = 32;

/// Samples tokens for one sequence: owns its RNG, penalty state and scratch buffer.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    penalties: Penalties,
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// Validates `params` and builds a sampler for a vocabulary of `vocab_size` logits.
    ///
    /// The RNG is `StdRng` seeded from `params.seed`, or from OS entropy when `None`. The same
    /// seed gives the same sequence for a given build (`StdRng` is not portable across rand
    /// versions).
    pub fn new(params: &SamplingParams, vocab_size: usize) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Ok(Sampler {
            params: params.clone(),
            rng,
            penalties: Penalties::new(
                params.repetition_penalty,
                params.frequency_penalty,
                params.presence_penalty,
                vocab_size,
            ),
            candidates: Vec::with_capacity(vocab_size),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token.
    ///
    /// `prompt_tokens` must be the same on every call and `generated` must only grow (the
    /// penalty state is updated from the new tail; anything else triggers a full recount).
    /// On return `logits` holds the penalised logits, before temperature and truncation.
    pub fn sample(&mut self, logits: &mut [f32], prompt_tokens: &[u32], generated: &[u32]) -> u32 {
        self.penalties.update(prompt_tokens, generated);
        self.penalties.apply(logits);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        if !self.truncate(logits) {
            // Every logit is -inf or NaN: nothing to draw from; fall back to greedy.
            return argmax(logits);
        }
        self.draw()
    }

    /// Fills `self.candidates` with the tokens that survive temperature, top-k, top-p and
    /// min-p, with their weights. Returns false when no token has a finite logit.
    fn truncate(&mut self, logits: &[f32]) -> bool {
        let t = self.params.temperature;
        let k = self.params.top_k;
        let cands = &mut self.candidates;
        if k > 0 && k < logits.len() {
            top_k_candidates(logits, t, k, cands);
        } else {
            cands.clear();
            // -inf (masked) and NaN tokens can never be drawn; dropping them here keeps every
            // later step free of special cases. HF divides by temperature: so do we.
            cands.extend(logits.iter().enumerate().filter_map(|(i, &l)| {
                let s = l / t;
                (s > f32::NEG_INFINITY).then_some(Candidate {
                    id: i as u32,
                    logit: s,
                    weight: 0.0,
                })
            }));
        }
        if cands.is_empty() {
            return false;
        }
        let max = cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
        let mut total = 0.0f64;
        for c in cands.iter_mut() {
            // The explicit 1 keeps a +inf logit from turning into exp(inf - inf) = NaN.
            c.weight = if c.logit == max {
                1.0
            } else {
                (c.logit - max).exp()
            };
            total += f64::from(c.weight);
        }
        let n_weighted = cands.len();
        let min_p = self.params.min_p;
        if min_p > 0.0 {
            let floor = max + min_p.ln();
            cands.retain(|c| c.logit >= floor);
        }
        let top_p = f64::from(self.params.top_p);
        if top_p < 1.0 {
            // Exact pre-filter: all tokens lighter than tau weigh < n * tau = (1 - top_p) * total
            // together, so each has more than top_p * total ahead of it and top-p would drop it.
            // With real LM logits this removes most of the vocabulary before the quickselect.
            // The factor 0.5 is headroom for rounding in `total`.
            let tau = (0.5 * (1.0 - top_p) * total / n_weighted as f64) as f32;
            cands.retain(|c| c.weight >= tau);
            top_p_prefix(cands, top_p * total);
        }
        true
    }

    /// Draws one candidate with probability proportional to its weight.
    fn draw(&mut self) -> u32 {
        let total: f64 = self.candidates.iter().map(|c| f64::from(c.weight)).sum();
        let u = self.rng.gen::<f64>() * total;
        let mut acc = 0.0f64;
        for c in &self.candidates {
            acc += f64::from(c.weight);
            if u < acc {
                return c.id;
            }
        }
        // Rounding left u at or past the last boundary: take the last token with weight.
        self.candidates
            .iter()
            .rev()
            .find(|c| c.weight > 0.0)
            .map_or(0, |c| c.id)
    }
}

/// Fills `cands` with the tokens whose scaled logit is at least the k-th largest (ties at the
/// boundary kept, as in HF), skipping -inf and NaN.
///
/// Streams the vocabulary through a buffer of `2k` (at least 256): when it fills, a
/// `select_nth_unstable` finds the k-th best so far and everything below it is dropped, and that
/// value then rejects most later logits with one comparison. Expected O(V) with a buffer of
/// O(k); copying all V candidates and selecting once was tried first and spent most of its time
/// moving the vocabulary around.
fn top_k_candidates(logits: &[f32], t: f32, k: usize, cands: &mut Vec<Candidate>) {
    cands.clear();
    let mut cap = (2 * k).max(256);
    // Lower bound on the final k-th largest value: nothing below it can survive.
    let mut floor = f32::NEG_INFINITY;
    let shrink = |cands: &mut Vec<Candidate>| -> f32 {
        cands.select_nth_unstable_by(k - 1, by_logit_desc);
        let kth = cands[k - 1].logit;
        cands.retain(|c| c.logit >= kth);
        kth
    };
    for (i, &l) in logits.iter().enumerate() {
        let s = l / t;
        if s >= floor && s > f32::NEG_INFINITY {
            cands.push(Candidate {
                id: i as u32,
                logit: s,
                weight: 0.0,
            });
            if cands.len() >= cap {
                floor = shrink(cands);
                // Many ties at the k-th value can keep the buffer full: grow instead of
                // re-selecting on every push.
                if cands.len() * 2 > cap {
                    cap *= 2;
                }
            }
        }
    }
    if cands.len() > k {
        shrink(cands);
    }
}

/// Truncates `cands` (weights set) to the top-p prefix: a token is kept iff the weight of the
/// tokens ahead of it (in `by_logit_desc` order) is `< mass`.
///
/// A quickselect on mass rather than a sort: split the undecided range at its median, keep the
/// half that holds the cut, so the expected cost is O(V) even when the nucleus is most of the
/// vocabulary (a flat distribution). Sorting the vocabulary, or sorting a growing head (tried
/// first: 10x slower than a plain softmax on flat logits), costs O(V log V).
fn top_p_prefix(cands: &mut Vec<Candidate>, mass: f64) {
    let weight = |c: &Candidate| f64::from(c.weight);
    // Invariant: every token in [0, lo) is ahead of every token in [lo, hi), which are ahead of
    // every token in [hi, len); `ahead` is the weight of [0, lo); the cut lies in [lo, hi].
    let (mut lo, mut hi) = (0, cands.len());
    let mut ahead = 0.0f64;
    while hi - lo > TOP_P_SORT_BELOW {
        let mid = lo + (hi - lo) / 2;
        cands[lo..hi].select_nth_unstable_by(mid - lo, by_logit_desc);
        let upper: f64 = cands[lo..mid].iter().map(weight).sum();
        if ahead + upper >= mass {
            // Token `mid` already has `mass` ahead of it: the cut is at or before it.
            hi = mid;
        } else {
            ahead += upper + weight(&cands[mid]);
            lo = mid + 1;
        }
    }
    cands[lo..hi].sort_unstable_by(by_logit_desc);
    let mut cut = hi;
    for (i, c) in cands[lo..hi].iter().enumerate() {
        if ahead >= mass {
            cut = lo + i;
            break;
        }
        ahead += weight(c);
    }
    cands.truncate(cut);
}

/// Index of the largest logit, lowest index on ties; NaN never wins. Returns 0 for an empty or
/// all-NaN slice.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_val = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &l) in logits.iter().enumerate() {
        // Strict `>` keeps the lowest id on ties; `found` lets an all -inf slice return its
        // first index rather than 0 by accident of initialisation.
        if (!found && !l.is_nan()) || l > best_val {
            best = i;
            best_val = l;
            found = true;
        }
    }
    best as u32
}

/// `(max, ln(sum(exp(logits - max))))`, so `log_softmax = (l - max) - ln_sum`: subtracting in
/// that order keeps precision for large logits (`l - (max + ln_sum)` loses ~1e-4 at 1000).
/// `max` is -inf for an empty or all -inf slice; NaN logits are skipped.
fn log_sum_exp_parts(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    if max == f32::NEG_INFINITY {
        return (max, 0.0);
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from((l - max).exp()))
        .sum();
    (max, sum.ln() as f32)
}

/// Replaces `logits` with their log-softmax.
pub fn log_softmax_in_place(logits: &mut [f32]) {
    let (max, ln_sum) = log_sum_exp_parts(logits);
    for l in logits.iter_mut() {
        *l = (*l - max) - ln_sum;
    }
}

/// The log-softmax of `logits`, as a new vector.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let mut out = logits.to_vec();
    log_softmax_in_place(&mut out);
    out
}

/// The `n` most likely tokens with their log-probabilities, most likely first (ties by lower
/// id), for OpenAI `logprobs`. NaN logits are skipped.
///
/// Keeps a small sorted list while scanning rather than sorting the vocabulary: `n` is at most
/// 20 in the API, and most logits fail the comparison with the current n-th best at once.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || (best.len() == n && best.last().is_some_and(|&(_, w)| l <= w)) {
            continue;
        }
        // First position whose logit is strictly smaller: later ids go after equal ones.
        let pos = best.partition_point(|&(_, w)| w >= l);
        best.insert(pos, (i as u32, l));
        best.truncate(n);
    }
    let (max, ln_sum) = log_sum_exp_parts(logits);
    for entry in &mut best {
        entry.1 = (entry.1 - max) - ln_sum;
    }
    best
}
