//! Tests for the sampler: penalties against hand-computed values, truncation against a full-sort
//! reference, seeded reproducibility, greedy ties, the drawn distribution, and validation.

use super::penalties::Penalties;
use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn sampler(params: SamplingParams, vocab: usize) -> Sampler {
    Sampler::new(&params, vocab).expect("test parameters are valid")
}

/// Penalised logits as the sampler leaves them (greedy, so nothing else touches them).
fn penalised(params: SamplingParams, logits: &[f32], prompt: &[u32], gen: &[u32]) -> Vec<f32> {
    let mut s = sampler(
        SamplingParams {
            temperature: 0.0,
            ..params
        },
        logits.len(),
    );
    let mut out = logits.to_vec();
    s.sample(&mut out, prompt, gen);
    out
}

#[test]
fn repetition_penalty_divides_positive_multiplies_negative() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        ..Default::default()
    };
    // Token 0 from the prompt, token 1 twice in the output (penalised once), 2 and 3 unseen.
    let out = penalised(params, &[2.0, -1.0, 0.5, 3.0], &[0], &[1, 1]);
    assert_eq!(out, [1.0, -2.0, 0.5, 3.0]);
}

#[test]
fn frequency_and_presence_penalties_count_generated_only() {
    let params = SamplingParams {
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        ..Default::default()
    };
    // Token 3 is only in the prompt: untouched. Token 2 three times, token 0 once.
    let out = penalised(params, &[1.0; 4], &[3], &[2, 2, 2, 0]);
    assert_eq!(out, [1.0 - 0.5 - 0.25, 1.0, 1.0 - 1.5 - 0.25, 1.0]);
}

#[test]
fn negative_penalties_encourage() {
    let params = SamplingParams {
        frequency_penalty: -1.0,
        presence_penalty: -0.5,
        ..Default::default()
    };
    let out = penalised(params, &[0.0, 0.0], &[], &[1, 1]);
    assert_eq!(out, [0.0, 2.5]);
}

#[test]
fn repetition_penalty_comes_before_frequency_penalty() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 1.0,
        ..Default::default()
    };
    // 4 / 2 - 1 = 1 (the other order would give (4 - 1) / 2 = 1.5).
    assert_eq!(penalised(params, &[4.0, 0.0], &[], &[0]), [1.0, 0.0]);
}

#[test]
fn out_of_vocab_history_is_ignored() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 1.0,
        ..Default::default()
    };
    assert_eq!(penalised(params, &[2.0, 2.0], &[7], &[9, 1]), [2.0, 0.0]);
}

/// Reference: penalties recomputed from the whole history with no state.
fn recount(p: &SamplingParams, logits: &mut [f32], prompt: &[u32], gen: &[u32]) {
    let mut seen: BTreeSet<u32> = prompt.iter().copied().collect();
    seen.extend(gen.iter().copied());
    for &t in &seen {
        let l = &mut logits[t as usize];
        *l = if *l < 0.0 {
            *l * p.repetition_penalty
        } else {
            *l / p.repetition_penalty
        };
    }
    for t in gen.iter().copied().collect::<BTreeSet<u32>>() {
        let c = gen.iter().filter(|&&g| g == t).count() as f32;
        logits[t as usize] -= p.frequency_penalty * c + p.presence_penalty;
    }
}

proptest! {
    /// Incremental bookkeeping over a growing (and once rewritten) history equals a recount.
    #[test]
    fn incremental_penalties_equal_recount(
        logits in proptest::collection::vec(-5.0f32..5.0, 16),
        prompt in proptest::collection::vec(0u32..16, 0..10),
        gen in proptest::collection::vec(0u32..16, 0..30),
        rewind in 0usize..30,
    ) {
        let p = SamplingParams {
            repetition_penalty: 1.3, frequency_penalty: 0.4, presence_penalty: 0.7,
            ..Default::default()
        };
        let mut state = Penalties::new(1.3, 0.4, 0.7, 16);
        let mut steps: Vec<usize> = (0..=gen.len()).collect();
        // A shorter history after a longer one (e.g. a recomputed sequence) must rebuild.
        steps.push(rewind.min(gen.len()));
        for n in steps {
            state.update(&prompt, &gen[..n]);
            let mut got = logits.clone();
            state.apply(&mut got);
            let mut want = logits.clone();
            recount(&p, &mut want, &prompt, &gen[..n]);
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn greedy_ties_pick_lowest_id_and_skip_nan() {
    let mut s = sampler(SamplingParams::greedy(), 4);
    assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0], &[], &[]), 1);
    assert_eq!(s.sample(&mut [f32::NAN, 1.0, f32::NAN, 1.0], &[], &[]), 1);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY]), 1);
    assert_eq!(argmax(&[]), 0);
}

#[test]
fn all_masked_falls_back_to_argmax() {
    let mut s = sampler(
        SamplingParams {
            seed: Some(1),
            ..Default::default()
        },
        3,
    );
    let mut logits = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY];
    assert_eq!(s.sample(&mut logits, &[], &[]), 0);
}

#[test]
fn masked_tokens_are_never_drawn() {
    let mut s = sampler(
        SamplingParams {
            seed: Some(3),
            ..Default::default()
        },
        4,
    );
    for _ in 0..1000 {
        let mut logits = [f32::NEG_INFINITY, 0.0, f32::NAN, 0.0];
        let t = s.sample(&mut logits, &[], &[]);
        assert!(t == 1 || t == 3, "drew masked token {t}");
    }
}

/// Reference truncation: full sort, then HF's warpers literally, in f64. `None` when a value
/// lies within float noise of a top-p or min-p boundary (either answer would be right).
fn reference_keep(logits: &[f32], p: &SamplingParams) -> Option<BTreeSet<u32>> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / p.temperature))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 && p.top_k < v.len() {
        let kth = v[p.top_k - 1].1;
        v.retain(|&(_, s)| s >= kth);
    }
    let max = f64::from(v[0].1);
    let w: Vec<f64> = v.iter().map(|&(_, s)| (f64::from(s) - max).exp()).collect();
    let total: f64 = w.iter().sum();
    if p.top_p < 1.0 {
        let mut before = 0.0;
        let mut keep = v.len();
        for (i, wi) in w.iter().enumerate() {
            if (before / total - f64::from(p.top_p)).abs() < 1e-4 {
                return None;
            }
            if before / total >= f64::from(p.top_p) {
                keep = keep.min(i);
            }
            before += wi;
        }
        v.truncate(keep);
    }
    if p.min_p > 0.0 {
        let floor = f64::from(p.min_p).ln();
        if v.iter()
            .any(|&(_, s)| (f64::from(s) - max - floor).abs() < 1e-4)
        {
            return None;
        }
        v.retain(|&(_, s)| f64::from(s) - max >= floor);
    }
    Some(v.into_iter().map(|(id, _)| id).collect())
}

fn logit_strategy() -> impl Strategy<Value = f32> {
    // Small integers make ties (top-k boundaries, equal probabilities) common.
    prop_oneof![-8.0f32..8.0, (-3i32..3).prop_map(|x| x as f32)]
}

proptest! {
    #[test]
    fn truncation_matches_full_sort_reference(
        logits in proptest::collection::vec(logit_strategy(), 1..1500),
        temperature in 0.2f32..2.0,
        top_k in prop_oneof![Just(0usize), 1usize..40, 100usize..1600],
        top_p in prop_oneof![Just(1.0f32), 0.05f32..1.0],
        min_p in prop_oneof![Just(0.0f32), 0.001f32..0.5],
    ) {
        let p = SamplingParams { temperature, top_k, top_p, min_p, ..Default::default() };
        let reference = reference_keep(&logits, &p);
        prop_assume!(reference.is_some());
        let mut s = sampler(p, logits.len());
        prop_assert!(s.truncate(&logits));
        let got: BTreeSet<u32> = s.candidates.iter().map(|c| c.id).collect();
        prop_assert_eq!(Some(got), reference);
    }
}

#[test]
fn top_p_on_a_flat_vocabulary() {
    // A flat vocabulary: 90% of the mass needs 4500 of 5000 tokens, many quickselect rounds.
    let logits = vec![0.0f32; 5000];
    let p = SamplingParams {
        top_p: 0.9,
        ..Default::default()
    };
    let mut s = sampler(p, logits.len());
    assert!(s.truncate(&logits));
    let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    // Ties go to lower ids; 4500 tokens hold exactly 0.9, so token 4500 is the first cut.
    assert_eq!(ids, (0..4500).collect::<Vec<u32>>());
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect();
    let best = argmax(&logits);
    for p in [
        SamplingParams {
            top_k: 1,
            seed: Some(5),
            ..Default::default()
        },
        SamplingParams {
            top_p: 1e-6,
            seed: Some(5),
            ..Default::default()
        },
        SamplingParams {
            min_p: 1.0,
            seed: Some(5),
            ..Default::default()
        },
    ] {
        let mut s = sampler(p, logits.len());
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &[], &[]), best);
        }
    }
}

fn generate(seed: u64, steps: usize) -> Vec<u32> {
    let p = SamplingParams {
        seed: Some(seed),
        temperature: 0.9,
        top_k: 200,
        top_p: 0.95,
        repetition_penalty: 1.1,
        frequency_penalty: 0.2,
        ..Default::default()
    };
    let vocab = 1000;
    let mut s = sampler(p, vocab);
    let prompt = [1u32, 2, 3];
    let mut gen = Vec::new();
    for step in 0..steps {
        let mut logits: Vec<f32> = (0..vocab)
            .map(|i| ((i * 7919 + step * 104729) % 1000) as f32 / 400.0)
            .collect();
        let t = s.sample(&mut logits, &prompt, &gen);
        gen.push(t);
    }
    gen
}

#[test]
fn same_seed_same_sequence() {
    assert_eq!(generate(42, 64), generate(42, 64));
    assert_ne!(generate(42, 64), generate(43, 64));
}

/// Pearson's chi-square of `n` draws over a 4-token vocabulary against softmax(logits / t).
fn chi_square(t: f32, n: usize) -> f64 {
    let logits = [0.0f32, 1.0, 2.0, 3.0];
    let mut s = sampler(
        SamplingParams {
            temperature: t,
            seed: Some(7),
            ..Default::default()
        },
        4,
    );
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&mut logits.clone(), &[], &[]) as usize] += 1;
    }
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l) / f64::from(t)).exp())
        .collect();
    let z: f64 = w.iter().sum();
    w.iter()
        .zip(counts)
        .map(|(wi, c)| {
            let expected = wi / z * n as f64;
            (c as f64 - expected).powi(2) / expected
        })
        .sum()
}

#[test]
fn temperature_shapes_the_distribution() {
    // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
    for t in [0.5f32, 1.0, 2.0] {
        let chi2 = chi_square(t, 200_000);
        assert!(chi2 < 16.27, "temperature {t}: chi-square {chi2}");
    }
}

#[test]
fn validate_names_the_parameter() {
    let cases: Vec<(SamplingParams, &str)> = vec![
        (
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: f32::NAN,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: 1.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                repetition_penalty: f32::NAN,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: 2.5,
                ..Default::default()
            },
            "frequency_penalty",
        ),
        (
            SamplingParams {
                presence_penalty: -3.0,
                ..Default::default()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                max_tokens: 0,
                ..Default::default()
            },
            "max_tokens",
        ),
        (
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
            "stop",
        ),
    ];
    for (params, name) in cases {
        let err = params.validate().expect_err(name);
        let SamplingError::InvalidParameter { param, .. } = &err;
        assert_eq!(*param, name);
        assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
        assert!(Sampler::new(&params, 8).is_err());
    }
    assert_eq!(SamplingParams::default().validate(), Ok(()));
    assert_eq!(SamplingParams::greedy().validate(), Ok(()));
    let edges = SamplingParams {
        top_p: 1.0,
        min_p: 1.0,
        frequency_penalty: -2.0,
        ..Default::default()
    };
    assert_eq!(edges.validate(), Ok(()));
}

#[test]
fn log_softmax_normalises() {
    let out = log_softmax(&[1.0, 2.0, 3.0, f32::NEG_INFINITY]);
    let mass: f32 = out.iter().map(|l| l.exp()).sum();
    assert!((mass - 1.0).abs() < 1e-6);
    assert!((out[2] - out[1] - 1.0).abs() < 1e-6);
    assert_eq!(out[3], f32::NEG_INFINITY);
    // Large logits stay finite (max subtracted before exp).
    assert!(log_softmax(&[1000.0, 1000.0])
        .iter()
        .all(|l| (l + 2f32.ln()).abs() < 1e-6));
}

#[test]
fn top_logprobs_sorted_with_ties_by_id() {
    let logits = [1.0, 3.0, 2.0, 3.0, f32::NAN, 0.5];
    let full = log_softmax(&[1.0, 3.0, 2.0, 3.0, 0.5]);
    let top = top_logprobs(&logits, 3);
    let ids: Vec<u32> = top.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, [1, 3, 2]);
    assert!((top[0].1 - full[1]).abs() < 1e-6 && (top[2].1 - full[2]).abs() < 1e-6);
    assert_eq!(top_logprobs(&logits, 0), []);
    assert_eq!(top_logprobs(&logits, 10).len(), 5);
}

proptest! {
    #[test]
    fn top_logprobs_matches_full_sort(
        logits in proptest::collection::vec(logit_strategy(), 0..200),
        n in 0usize..25,
    ) {
        let full = log_softmax(&logits);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        order.truncate(n);
        let top = top_logprobs(&logits, n);
        prop_assert_eq!(top.iter().map(|&(id, _)| id).collect::<Vec<_>>(), order);
        for (id, lp) in top {
            prop_assert!((lp - full[id as usize]).abs() < 1e-5);
        }
    }
}

/// Rough per-token cost at the SmolLM2 vocabulary; run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_49152() {
    let vocab = 49152;
    let base: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919) % 10007) as f32 / 1000.0)
        .collect();
    let configs = [
        ("greedy", SamplingParams::greedy()),
        ("full softmax", SamplingParams::default()),
        (
            "top_k=50",
            SamplingParams {
                top_k: 50,
                ..Default::default()
            },
        ),
        (
            "top_p=0.9",
            SamplingParams {
                top_p: 0.9,
                ..Default::default()
            },
        ),
        (
            "top_p=0.9 min_p=0.05",
            SamplingParams {
                top_p: 0.9,
                min_p: 0.05,
                ..Default::default()
            },
        ),
        (
            "top_k=50 top_p=0.9 penalties",
            SamplingParams {
                top_k: 50,
                top_p: 0.9,
                repetition_penalty: 1.1,
                frequency_penalty: 0.3,
                ..Default::default()
            },
        ),
    ];
    let prompt: Vec<u32> = (0..2000).map(|i| (i * 31) % vocab as u32).collect();
    for (name, p) in configs {
        let mut s = sampler(p, vocab);
        let mut gen = Vec::new();
        let mut logits = base.clone();
        let start = std::time::Instant::now();
        let iters = 500;
        for _ in 0..iters {
            logits.copy_from_slice(&base);
            let t = s.sample(&mut logits, &prompt, &gen);
            gen.push(t);
        }
        println!(
            "{name:32} {:8.1} us/token",
            start.elapsed().as_secs_f64() * 1e6 / iters as f64
        );
    }
}
