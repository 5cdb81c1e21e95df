//! Unit tests of the pure beam logic (selection, n-gram bans, length normalisation, the
//! early-stop test) and of the search's stopping rules on a tiny hand-made model.

use std::cell::Cell;

use super::select::{can_improve, heuristic_len, top_k};
use super::*;

#[test]
fn top_k_is_descending_with_ties_to_the_lower_index() {
    let v = [1.0, 3.0, 3.0, 2.0, f32::NEG_INFINITY];
    assert_eq!(top_k(&v, 2), vec![1, 2]);
    assert_eq!(top_k(&v, 3), vec![1, 2, 3]);
    assert_eq!(top_k(&v, 9), vec![1, 2, 3, 0, 4]);
    assert!(top_k(&v, 0).is_empty());
}

#[test]
fn ngram_bans_follow_transformers() {
    // HF docstring example: no earlier window starts with the suffix (4346).
    assert!(banned_ngram_tokens(&[40, 2883, 2712, 4346], 2).is_empty());
    // The bigram (1, 2) occurred and the history ends with 1: 2 is banned.
    assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1], 2), vec![2]);
    // Both (1, 2) and (1, 3) occurred.
    assert_eq!(banned_ngram_tokens(&[1, 2, 1, 3, 1], 2), vec![2, 3]);
    // Trigram (1, 2, 3) occurred and the history ends with (1, 2).
    assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
    assert!(banned_ngram_tokens(&[1, 2, 3, 1, 3], 3).is_empty());
    // Size 1 bans every token seen; shorter histories and size 0 ban nothing.
    assert_eq!(banned_ngram_tokens(&[5, 4, 5], 1), vec![4, 5]);
    assert!(banned_ngram_tokens(&[1, 2], 3).is_empty());
    assert!(banned_ngram_tokens(&[1, 1, 1], 0).is_empty());
    // The window that would start at the suffix is incomplete: (7, 7) bans 7 only once seen.
    assert!(banned_ngram_tokens(&[7], 2).is_empty());
    assert_eq!(banned_ngram_tokens(&[7, 7], 2), vec![7]);
}

#[test]
fn length_penalty_divides_by_a_power_of_the_generated_length() {
    assert_eq!(length_normalized(-6.0, 3, 1.0), -2.0);
    assert_eq!(length_normalized(-6.0, 4, 0.5), -3.0);
    assert_eq!(length_normalized(-6.0, 3, 0.0), -6.0);
    assert_eq!(length_normalized(-18.0, 3, 2.0), -2.0);
    assert_eq!(length_normalized(-2.0, 4, -1.0), -8.0);
}

fn slot(score: f32, finished: bool) -> Slot {
    Slot {
        tokens: Vec::new(),
        score,
        finished,
    }
}

#[test]
fn early_stop_test_waits_for_every_slot_then_compares_with_the_worst() {
    let full = [slot(-1.0, true), slot(-3.0, true)];
    // Best running -8 over 4 tokens = -2 beats the worst kept (-3): keep going.
    assert!(can_improve(-8.0, 4, 1.0, &full));
    // -16 / 4 = -4 cannot.
    assert!(!can_improve(-16.0, 4, 1.0, &full));
    // An unfinished slot: always worth going on.
    assert!(can_improve(
        -100.0,
        4,
        1.0,
        &[slot(-1.0, true), slot(NEG_BIG, false)]
    ));
    // "never" with a positive penalty measures at max_new_tokens, otherwise at the current length.
    assert_eq!(heuristic_len(EarlyStopping::Never, 1.0, 3, 20), 20);
    assert_eq!(heuristic_len(EarlyStopping::Never, 0.0, 3, 20), 3);
    assert_eq!(heuristic_len(EarlyStopping::Never, -1.0, 3, 20), 3);
    assert_eq!(heuristic_len(EarlyStopping::Heuristic, 1.0, 3, 20), 3);
    assert_eq!(heuristic_len(EarlyStopping::WhenFull, 2.0, 3, 20), 3);
}

#[test]
fn early_stopping_parses_transformers_values() {
    assert_eq!(
        "true".parse::<EarlyStopping>().ok(),
        Some(EarlyStopping::WhenFull)
    );
    assert_eq!(
        "False".parse::<EarlyStopping>().ok(),
        Some(EarlyStopping::Heuristic)
    );
    assert_eq!(
        "never".parse::<EarlyStopping>().ok(),
        Some(EarlyStopping::Never)
    );
    assert!("sometimes".parse::<EarlyStopping>().is_err());
}

#[test]
fn invalid_params_are_rejected() {
    let ok = BeamParams::default();
    assert!(ok.validate().is_ok());
    let bad = [
        BeamParams {
            num_beams: 0,
            ..ok.clone()
        },
        BeamParams {
            num_return_sequences: 5,
            ..ok.clone()
        },
        BeamParams {
            num_return_sequences: 0,
            ..ok.clone()
        },
        BeamParams {
            max_new_tokens: 0,
            ..ok.clone()
        },
        BeamParams {
            length_penalty: f32::NAN,
            ..ok.clone()
        },
    ];
    for p in bad {
        assert!(p.validate().is_err(), "{p:?}");
    }
}

/// Vocabulary {0: A, 1: B, 2: EOS}; EOS is by far the likeliest token at every step, so early
/// hypotheses finish and the running beams fall far behind: how long the search goes on is
/// decided by `early_stopping` alone. Counts its forward passes.
struct EosHeavy {
    steps: Cell<usize>,
}

impl BeamModel for EosHeavy {
    type State = ();
    fn step(&self, states: &mut [()], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        assert_eq!(states.len(), tokens.len());
        self.steps.set(self.steps.get() + 1);
        Ok(vec![vec![0.0, -0.5, 5.0]; tokens.len()])
    }
}

fn run(early_stopping: EarlyStopping) -> (Vec<Hypothesis>, usize) {
    let model = EosHeavy {
        steps: Cell::new(0),
    };
    let params = BeamParams {
        num_beams: 2,
        max_new_tokens: 6,
        length_penalty: 1.0,
        early_stopping,
        num_return_sequences: 2,
        eos: vec![2],
        ..BeamParams::default()
    };
    let hyps = beam_search(&model, (), &[0.0, -0.5, 5.0], &[], &params).expect("search");
    (hyps, model.steps.get())
}

#[test]
fn early_stopping_decides_how_long_the_search_runs() {
    // Step 1: EOS finishes (slot 1 of 2); step 2: "A EOS" fills slot 2.
    let (when_full, n_full) = run(EarlyStopping::WhenFull);
    assert_eq!(n_full, 1, "stops once both slots are full");
    assert_eq!(when_full[0].tokens, vec![2]);
    assert_eq!(when_full[1].tokens, vec![0, 2]);
    assert!(when_full.iter().all(|h| h.ended_by_eos));
    // The heuristic compares the best running beam at its current length with the worst kept
    // hypothesis: "A A" (about -10 over 2 tokens: -5) cannot beat "A EOS" (about -2.5), so it stops
    // at the same point here.
    let (heuristic, n_heur) = run(EarlyStopping::Heuristic);
    assert_eq!(n_heur, 1);
    assert_eq!(heuristic, when_full);
    // "never" with length_penalty > 0 divides by max_new_tokens (6): -10 / 6 > -2.5, so the
    // search goes on until the running beams cannot win even at full length, or to the end.
    let (never, n_never) = run(EarlyStopping::Never);
    assert!(n_never > n_heur, "never ran {n_never} passes");
    assert_eq!(never[0].tokens, vec![2]);
    // Scores are exact: log_softmax([0, -0.5, 5]) summed, divided by the length.
    let lp = crate::log_softmax(&[0.0, -0.5, 5.0]);
    assert!((when_full[0].score - lp[2]).abs() < 1e-6);
    assert!((when_full[1].score - (lp[0] + lp[2]) / 2.0).abs() < 1e-6);
}

#[test]
fn max_new_tokens_finishes_every_slot() {
    // No EOS at all: the search runs exactly max_new_tokens steps and returns full-length beams,
    // best first, scored by their mean log-probability.
    let model = EosHeavy {
        steps: Cell::new(0),
    };
    let params = BeamParams {
        num_beams: 3,
        max_new_tokens: 4,
        num_return_sequences: 3,
        ..BeamParams::default()
    };
    let hyps = beam_search(&model, (), &[0.0, -0.5, 5.0], &[], &params).expect("search");
    assert_eq!(model.steps.get(), 3);
    assert_eq!(hyps.len(), 3);
    assert_eq!(hyps[0].tokens, vec![2, 2, 2, 2]);
    assert!(hyps.iter().all(|h| h.tokens.len() == 4 && !h.ended_by_eos));
    assert!(hyps.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn forking_moves_the_last_child_and_clones_the_rest() {
    let states = vec![vec![1], vec![2], vec![3]];
    assert_eq!(fork(states, &[2, 2, 0]), vec![vec![3], vec![3], vec![1]]);
}
