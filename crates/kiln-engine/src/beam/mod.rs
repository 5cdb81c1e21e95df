//! Beam search, written once for every model that can implement [`BeamModel`] (causal decoders
//! through [`CausalBeam`], encoder-decoders through their own state).
//!
//! Reference: transformers 5.24 `GenerationMixin._beam_search` and its helpers
//! (`generation/utils.py`: `_get_top_k_continuations`, `_get_running_beams_for_next_iteration`,
//! `_update_finished_beams`, `_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`),
//! reproduced step for step, in f32 as torch computes it, so sequences and scores match:
//! - each step scores `log_softmax(logits)` (then n-gram / min-new-tokens bans set `-inf`) plus the
//!   beam's running score, over all `num_beams * vocab` continuations, and keeps the top
//!   `K = max(2, 1 + n_eos) * num_beams`;
//! - a candidate "hits a stopping criterion" if its token is an EOS id or it is the
//!   `max_new_tokens`-th token; the best `num_beams` candidates that do not are the next running
//!   beams (hits get `-1e9` added, as in HF);
//! - hits among the first `num_beams` candidates become finished hypotheses scored
//!   `sum_logprobs / generated_len ^ length_penalty`, where `generated_len` counts the generated
//!   tokens including the final one (EOS included); the best `num_beams` finished hypotheses are
//!   kept;
//! - `early_stopping`: see [`EarlyStopping`]; the search also ends when every candidate of a step
//!   hits a stopping criterion (the `max_new_tokens`-th step).
//! - The first step starts from one state with score 0 and `num_beams - 1` copies at `-1e9`, as
//!   HF expands the prompt; with a vocabulary of at least `K` tokens only the first copy yields
//!   candidates.
//!
//! Deviations: ties in the top-k selections go to the lower flat index (torch's order on exact
//! ties is unspecified); no beam sampling, groups or constraints; `min_length` is only offered as
//! `min_new_tokens` (the same for a causal model once the prompt length is subtracted).

mod causal;
mod generate;
mod select;
#[cfg(test)]
mod tests;

pub use causal::CausalBeam;
pub use generate::{BeamGeneration, BeamSequence};
pub use select::{banned_ngram_tokens, length_normalized};

use crate::{Error, Result};

/// A model that beam search can drive: each hypothesis owns a decoding state (e.g. its KV cache)
/// that is cloned when a beam forks.
pub trait BeamModel {
    type State: Clone;
    /// Feeds `tokens[i]` to `states[i]` (one token per state, all in one forward pass) and returns
    /// each state's next-token logits (vocab-sized, raw: beam search applies the log-softmax).
    fn step(&self, states: &mut [Self::State], tokens: &[u32]) -> Result<Vec<Vec<f32>>>;
}

/// The [`BeamModel::step`] contract: one token per state.
pub(crate) fn check_step(states: usize, tokens: usize) -> Result<()> {
    if states != tokens {
        return Err(Error::InvalidArgument(format!(
            "beam step: {states} states but {tokens} tokens"
        )));
    }
    Ok(())
}

/// transformers' `early_stopping`: when the search may stop before `max_new_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `early_stopping=True`: stop as soon as `num_beams` finished hypotheses exist.
    WhenFull,
    /// `early_stopping=False` (HF's default): stop once the best running beam, normalised by its
    /// current length, cannot beat the worst kept hypothesis.
    #[default]
    Heuristic,
    /// `early_stopping="never"`: like `Heuristic` but, when `length_penalty > 0`, the best running
    /// beam is normalised by `max_new_tokens` (the most it could grow), so the search rarely stops
    /// early.
    Never,
}

impl std::str::FromStr for EarlyStopping {
    type Err = Error;
    /// `true`, `false` or `never`, as in transformers.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "true" => Ok(EarlyStopping::WhenFull),
            "false" => Ok(EarlyStopping::Heuristic),
            "never" => Ok(EarlyStopping::Never),
            _ => Err(Error::InvalidArgument(format!(
                "early_stopping must be true, false or never, not {s:?}"
            ))),
        }
    }
}

/// Beam search settings, with transformers' names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamParams {
    pub num_beams: usize,
    /// Most tokens to generate (HF `max_new_tokens`; `max_length` minus the prompt/decoder start).
    pub max_new_tokens: usize,
    /// Exponent of the generated length that divides a finished hypothesis' log-probability.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// Forbid repeating any n-gram of this size within prefix + hypothesis (0 = off).
    pub no_repeat_ngram_size: usize,
    /// Hypotheses returned, best first (<= `num_beams`).
    pub num_return_sequences: usize,
    /// EOS is forbidden until this many tokens have been generated (0 = off).
    pub min_new_tokens: usize,
    /// Token ids that finish a hypothesis (may be empty: only `max_new_tokens` ends it).
    pub eos: Vec<u32>,
}

impl Default for BeamParams {
    fn default() -> Self {
        BeamParams {
            num_beams: 4,
            max_new_tokens: 20,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            no_repeat_ngram_size: 0,
            num_return_sequences: 1,
            min_new_tokens: 0,
            eos: Vec::new(),
        }
    }
}

impl BeamParams {
    /// Rejects settings transformers rejects (or that cannot produce a result).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) must be between 1 and num_beams ({})",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty must be finite, not {}",
                self.length_penalty
            ));
        }
        Ok(())
    }
}

/// A finished hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated ids only, the final EOS included when it ended the hypothesis (as in HF's
    /// `sequences`, minus the prompt and padding).
    pub tokens: Vec<u32>,
    /// HF's `sequences_scores`: summed log-probabilities / `tokens.len() ^ length_penalty`.
    pub score: f32,
    /// Whether an EOS id ended it (otherwise `max_new_tokens` did).
    pub ended_by_eos: bool,
}

/// HF adds this to scores it wants out of the running (see module doc); in f32 it swamps any
/// log-probability, so such scores tie with each other.
const NEG_BIG: f32 = -1.0e9;

/// One beam: its generated tokens and summed log-probability.
#[derive(Clone)]
struct Beam {
    tokens: Vec<u32>,
    score: f32,
}

/// A kept finished slot (HF `sequences` / `beam_scores` / `is_sent_finished`).
#[derive(Clone)]
struct Slot {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
}

/// Runs beam search from `init` (a state that has consumed the prompt) whose next-token logits
/// are `first_logits`. `prefix` holds the ids before the first generated one that count for
/// n-gram blocking (the prompt of a causal model, the decoder start token of a seq2seq one).
/// Returns `num_return_sequences` hypotheses, best first.
pub fn beam_search<M: BeamModel>(
    model: &M,
    init: M::State,
    first_logits: &[f32],
    prefix: &[u32],
    params: &BeamParams,
) -> Result<Vec<Hypothesis>> {
    params.validate()?;
    let nb = params.num_beams;
    let vocab = first_logits.len();
    if vocab == 0 {
        return Err(Error::InvalidArgument(
            "the model returned empty logits".into(),
        ));
    }
    let n_keep = 2.max(1 + params.eos.len()) * nb;
    let lp = params.length_penalty;

    let mut running: Vec<Beam> = (0..nb)
        .map(|i| Beam {
            tokens: Vec::new(),
            score: if i == 0 { 0.0 } else { NEG_BIG },
        })
        .collect();
    let mut states: Vec<M::State> = vec![init; nb];
    let mut logits: Vec<Vec<f32>> = vec![first_logits.to_vec(); nb];
    let mut kept: Vec<Slot> = vec![
        Slot {
            tokens: Vec::new(),
            score: NEG_BIG,
            finished: false,
        };
        nb
    ];
    let mut improvable = true;
    let mut acc: Vec<f32> = Vec::with_capacity(nb * vocab);
    let mut n_gen = 0usize;

    loop {
        // b. log-probabilities plus each beam's running score, flattened (beam, token).
        accumulate(&running, &logits, vocab, n_gen, prefix, params, &mut acc)?;

        // c. the top `n_keep` continuations over all beams; d. which of them stop.
        let top = select::top_k(&acc, n_keep);
        let last_step = n_gen + 1 >= params.max_new_tokens;
        let cands: Vec<Candidate> = top
            .iter()
            .map(|&i| {
                let token = (i % vocab) as u32;
                let hits = last_step || params.eos.contains(&token);
                (i / vocab, token, acc[i], hits)
            })
            .collect();

        // e. the next running beams: the best `nb` candidates, stopped ones pushed down.
        let run_scores: Vec<f32> = cands
            .iter()
            .map(|&(_, _, s, hits)| if hits { s + NEG_BIG } else { s })
            .collect();
        let next = select::top_k(&run_scores, nb);

        // f. finished hypotheses: only hits among the first `nb` candidates may enter.
        kept = update_kept(kept, &cands, &running, n_gen + 1, improvable, params);

        // g. the stopping condition for the search as a whole.
        let new_running: Vec<Beam> = next
            .iter()
            .map(|&c| {
                let (b, t, _, _) = cands[c];
                let mut tokens = running[b].tokens.clone();
                tokens.push(t);
                Beam {
                    tokens,
                    score: run_scores[c],
                }
            })
            .collect();
        n_gen += 1;
        let best_len =
            select::heuristic_len(params.early_stopping, lp, n_gen, params.max_new_tokens);
        let best_running = new_running.first().map_or(f32::NEG_INFINITY, |b| b.score);
        improvable = improvable && select::can_improve(best_running, best_len, lp, &kept);
        let all_full = kept.iter().all(|s| s.finished);
        let done_early = all_full && params.early_stopping == EarlyStopping::WhenFull;
        let all_hit = cands.iter().all(|c| c.3);
        if !improvable || done_early || all_hit {
            break;
        }

        // a. fork the states of the parents and feed each new beam its last token.
        let parents: Vec<usize> = next.iter().map(|&c| cands[c].0).collect();
        states = fork(states, &parents);
        let tokens: Vec<u32> = next.iter().map(|&c| cands[c].1).collect();
        logits = model.step(&mut states, &tokens)?;
        if logits.len() != nb {
            return Err(Error::InvalidArgument(format!(
                "the model returned logits for {} of {nb} beams",
                logits.len()
            )));
        }
        running = new_running;
    }

    Ok(kept
        .into_iter()
        .take(params.num_return_sequences)
        .filter(|s| s.finished)
        .map(|s| Hypothesis {
            ended_by_eos: s.tokens.last().is_some_and(|t| params.eos.contains(t)),
            tokens: s.tokens,
            score: s.score,
        })
        .collect())
}

/// A step candidate: (parent beam, token, accumulated log-probability, hits a stopping criterion).
type Candidate = (usize, u32, f32, bool);

/// HF steps b: each beam's `log_softmax(logits)`, with n-gram and min-new-tokens bans set to
/// `-inf` (HF's processors run after the log-softmax, so nothing is renormalised), plus the
/// beam's running score; flattened into `acc` as `beam * vocab + token`.
fn accumulate(
    running: &[Beam],
    logits: &[Vec<f32>],
    vocab: usize,
    n_gen: usize,
    prefix: &[u32],
    params: &BeamParams,
    acc: &mut Vec<f32>,
) -> Result<()> {
    acc.clear();
    let mut history: Vec<u32> = Vec::with_capacity(prefix.len() + n_gen);
    for (beam, row) in running.iter().zip(logits) {
        if row.len() != vocab {
            return Err(Error::InvalidArgument(format!(
                "the model returned {} logits for one beam and {vocab} for another",
                row.len()
            )));
        }
        let mut lprobs = crate::log_softmax(row);
        if n_gen < params.min_new_tokens {
            for &e in &params.eos {
                if let Some(l) = lprobs.get_mut(e as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if params.no_repeat_ngram_size > 0 {
            history.clear();
            history.extend_from_slice(prefix);
            history.extend_from_slice(&beam.tokens);
            for t in banned_ngram_tokens(&history, params.no_repeat_ngram_size) {
                if let Some(l) = lprobs.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        acc.extend(lprobs.iter().map(|&l| l + beam.score));
    }
    Ok(())
}

/// HF `_update_finished_beams`: candidates that stop and rank among the first `num_beams` enter
/// with their length-normalised score (`gen_len` tokens); everything else is pushed down by
/// `-1e9` (as are all candidates once the search is full under `early_stopping=True` or can no
/// longer improve); the best `num_beams` of old and new are kept, old first on ties.
fn update_kept(
    kept: Vec<Slot>,
    cands: &[Candidate],
    running: &[Beam],
    gen_len: usize,
    improvable: bool,
    params: &BeamParams,
) -> Vec<Slot> {
    let nb = params.num_beams;
    let lock = kept.iter().all(|s| s.finished) && params.early_stopping == EarlyStopping::WhenFull;
    let mut merged: Vec<f32> = kept.iter().map(|s| s.score).collect();
    for (rank, &(_, _, s, hits)) in cands.iter().enumerate() {
        // Three separate f32 additions, as HF does them.
        let mut v = length_normalized(s, gen_len, params.length_penalty);
        if lock {
            v += NEG_BIG;
        }
        if !improvable {
            v += NEG_BIG;
        }
        if !(hits && rank < nb) {
            v += NEG_BIG;
        }
        merged.push(v);
    }
    select::top_k(&merged, nb)
        .iter()
        .map(|&m| {
            if m < nb {
                return kept[m].clone();
            }
            let rank = m - nb;
            let (b, t, _, hits) = cands[rank];
            let mut tokens = running[b].tokens.clone();
            tokens.push(t);
            Slot {
                tokens,
                score: merged[m],
                finished: hits && rank < nb,
            }
        })
        .collect()
}

/// The states of the next beams: `parents[i]` is the index of beam i's parent. A parent's state
/// moves to its last child and is cloned for the others, so an unforked beam copies nothing.
fn fork<S: Clone>(states: Vec<S>, parents: &[usize]) -> Vec<S> {
    let mut remaining = vec![0usize; states.len()];
    for &p in parents {
        remaining[p] += 1;
    }
    let mut slots: Vec<Option<S>> = states.into_iter().map(Some).collect();
    parents
        .iter()
        .map(|&p| {
            remaining[p] -= 1;
            if remaining[p] == 0 {
                slots[p]
                    .take()
                    .expect("a parent's state is taken only by its last child")
            } else {
                slots[p]
                    .clone()
                    .expect("a parent's state is present until its last child")
            }
        })
        .collect()
}
