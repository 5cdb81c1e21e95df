//! The pure pieces of beam search: top-k selection, n-gram bans, length normalisation and the
//! early-stopping test. Each mirrors one transformers expression (named in its doc) in f32.

use super::{EarlyStopping, Slot, NEG_BIG};

/// Indices of the `k` largest values, largest first; ties go to the lower index (torch.topk
/// leaves exact ties unspecified). NaN sorts above everything, as in `f32::total_cmp`.
pub(super) fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    let order = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..values.len()).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx
}

/// Tokens that would repeat an n-gram of size `n` already in `history` (HF
/// `NoRepeatNGramLogitsProcessor`): every earlier window whose first `n - 1` tokens equal the
/// last `n - 1` of `history` bans its last token. Nothing is banned while `history` is shorter
/// than `n`, or when `n` is 0.
pub fn banned_ngram_tokens(history: &[u32], n: usize) -> Vec<u32> {
    let len = history.len();
    if n == 0 || len < n {
        return Vec::new();
    }
    let suffix = &history[len + 1 - n..];
    let mut banned: Vec<u32> = history
        .windows(n)
        .filter(|w| &w[..n - 1] == suffix)
        .map(|w| w[n - 1])
        .collect();
    banned.sort_unstable();
    banned.dedup();
    banned
}

/// A finished hypothesis' score: `sum_logprobs / generated_len ^ length_penalty`. As in HF the
/// power is taken in double precision (a Python float) and the division in f32.
pub fn length_normalized(sum_logprobs: f32, generated_len: usize, length_penalty: f32) -> f32 {
    sum_logprobs / (generated_len as f64).powf(length_penalty as f64) as f32
}

/// HF `_check_early_stop_heuristic` for one batch row (before the `&` with the previous value):
/// can the best running beam, normalised by `best_len`, still beat a kept hypothesis? While a
/// slot is unfinished its bar is `-1e9`, so the answer is yes until all `num_beams` are finished.
pub(super) fn can_improve(
    best_running: f32,
    best_len: usize,
    length_penalty: f32,
    kept: &[Slot],
) -> bool {
    let best = length_normalized(best_running, best_len, length_penalty);
    let min = kept.iter().map(|s| s.score).fold(f32::INFINITY, f32::min);
    kept.iter()
        .any(|s| best > if s.finished { min } else { NEG_BIG })
}

/// The length the best running beam is normalised by in the early-stop test: its current length,
/// except that `"never"` with a positive length penalty assumes it grows to `max_new_tokens`.
pub(super) fn heuristic_len(
    early_stopping: EarlyStopping,
    length_penalty: f32,
    n_generated: usize,
    max_new_tokens: usize,
) -> usize {
    if early_stopping == EarlyStopping::Never && length_penalty > 0.0 {
        max_new_tokens
    } else {
        n_generated
    }
}
