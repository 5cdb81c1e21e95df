//! `kiln score --reference BASE`: a model's quality report against a base model over the same
//! windows. The numbers are checked against an independent computation here: each window's
//! full logits from `Engine::step` over a contiguous `KvCache` (not the paged pool that
//! `kiln score` runs), reduced in f64 by this file's own log-softmax, KL and argmax.
//!
//! Pairs sharing a tokenizer: the GPT-2 fixture (f32 safetensors + tokenizer.json) and its GGUF
//! conversion (2-D weights f16, tokenizer from `tokenizer.ggml.*`); the Mixtral GGUF in f32 and
//! its copy with Q8_0 experts. The LLaMA server fixture has a different tokenizer.

use std::path::Path;

use kiln_engine::Engine;
use serde_json::Value;

mod common;
use common::{f, fixture, kiln, kiln_json};

/// The fixtures' scoring sentence three times (~80 tokens): with `--context 16`, five full
/// windows and a short last one.
fn text() -> String {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gpt2/reference.json")).expect("reference.json"),
    )
    .expect("reference.json");
    let s = r["score_text"].as_str().expect("score_text");
    format!("{s} {s} {s}")
}

fn compare_json(model: &Path, reference: &Path, text: &str, context: &str) -> Value {
    kiln_json(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--text",
        text,
        "--context",
        context,
        "--json",
    ])
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "{what}: kiln {got}, independent {want} (relative {:.3e})",
        ((got - want) / want).abs()
    );
}

#[test]
fn a_model_against_itself_has_zero_kl_and_the_plain_perplexity() {
    let text = text();
    for model in [fixture("gpt2"), fixture("mixtral_gguf/model-q8_0.gguf")] {
        let plain = kiln_json(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--text",
            &text,
            "--context",
            "16",
            "--json",
        ]);
        let c = compare_json(&model, &model, &text, "16");
        let name = model.display();
        assert_eq!(f(&c, "perplexity"), f(&plain, "perplexity"), "{name}");
        assert_eq!(
            f(&c, "reference_perplexity"),
            f(&plain, "perplexity"),
            "{name}"
        );
        assert_eq!(f(&c, "perplexity_change_pct"), 0.0, "{name}");
        for key in ["kl_mean", "kl_median", "kl_p99", "kl_max"] {
            assert!(f(&c, key).abs() < 1e-9, "{name}: {key} = {}", c[key]);
        }
        assert_eq!(f(&c, "top1_agreement"), 1.0, "{name}");
        assert_eq!(f(&c, "delta_p_mean"), 0.0, "{name}");
        assert_eq!(c["n_scored"], plain["n_scored"], "{name}");
        assert_eq!(c["n_windows"], plain["n_windows"], "{name}");
    }
}

/// What `kiln score --reference` should report, from each window's full logits.
struct Independent {
    perplexity: f64,
    reference_perplexity: f64,
    kl: Vec<f64>,
    top1_agreement: f64,
    delta_p_mean: f64,
}

fn load(path: &Path) -> Engine {
    Engine::load(path, &mut |_, _| {}).expect("load fixture")
}

/// Every row's logits of one window, `(input.len(), vocab)`, through a contiguous cache.
fn window_logits(e: &Engine, input: &[u32]) -> Vec<f64> {
    let mut cache = e.model.new_cache();
    let logits = e.step(&mut cache, input, input.len()).expect("forward");
    logits.into_f32_vec().into_iter().map(f64::from).collect()
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let ln_sum = row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - max - ln_sum).collect()
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

fn independent(model: &Path, reference: &Path, text: &str, context: usize) -> Independent {
    let (m, r) = (load(model), load(reference));
    let ids = m.tokenizer.encode(text, false).expect("encode");
    assert_eq!(ids, r.tokenizer.encode(text, false).expect("encode"));
    let vocab = m.info.vocab_size;
    let (mut nll, mut reference_nll, mut kl, mut same, mut dp) =
        (0.0, 0.0, Vec::new(), 0usize, 0.0);
    for w in ids.chunks(context).filter(|w| w.len() >= 2) {
        let input = &w[..w.len() - 1];
        let (lm, lr) = (window_logits(&m, input), window_logits(&r, input));
        for ((rm, rr), &t) in lm.chunks(vocab).zip(lr.chunks(vocab)).zip(&w[1..]) {
            let (pm, pr) = (log_softmax(rm), log_softmax(rr));
            kl.push(pr.iter().zip(&pm).map(|(a, b)| a.exp() * (a - b)).sum());
            same += usize::from(argmax(rm) == argmax(rr));
            nll -= pm[t as usize];
            reference_nll -= pr[t as usize];
            dp += pm[t as usize].exp() - pr[t as usize].exp();
        }
    }
    let n = kl.len() as f64;
    Independent {
        perplexity: (nll / n).exp(),
        reference_perplexity: (reference_nll / n).exp(),
        kl,
        top1_agreement: same as f64 / n,
        delta_p_mean: dp / n,
    }
}

#[test]
fn two_models_match_an_independent_computation_from_full_logits() {
    let text = text();
    let pairs = [
        // (model, reference): the converted or quantized file against its base.
        (fixture("gpt2_gguf/model.gguf"), fixture("gpt2")),
        (
            fixture("mixtral_gguf/model-q8_0.gguf"),
            fixture("mixtral_gguf/model.gguf"),
        ),
    ];
    for (model, reference) in &pairs {
        let name = format!("{} vs {}", model.display(), reference.display());
        let c = compare_json(model, reference, &text, "16");
        let want = independent(model, reference, &text, 16);
        assert_eq!(c["n_scored"].as_u64(), Some(want.kl.len() as u64), "{name}");
        let kl_mean = want.kl.iter().sum::<f64>() / want.kl.len() as f64;
        let mut sorted = want.kl.clone();
        sorted.sort_by(f64::total_cmp);
        let kl_max = *sorted.last().unwrap();
        // The median of an even count: the mean of the two middle values.
        let mid = sorted.len() / 2;
        let kl_median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        assert!(kl_mean > 0.0, "{name}: the two models should differ");
        close(f(&c, "kl_mean"), kl_mean, 1e-6, &format!("{name}: kl_mean"));
        close(f(&c, "kl_max"), kl_max, 1e-6, &format!("{name}: kl_max"));
        close(
            f(&c, "kl_median"),
            kl_median,
            1e-6,
            &format!("{name}: kl_median"),
        );
        assert!(f(&c, "kl_p99") <= f(&c, "kl_max") && f(&c, "kl_p99") >= f(&c, "kl_median"));
        close(f(&c, "perplexity"), want.perplexity, 1e-6, &name);
        close(
            f(&c, "reference_perplexity"),
            want.reference_perplexity,
            1e-6,
            &name,
        );
        assert_eq!(f(&c, "top1_agreement"), want.top1_agreement, "{name}");
        close(
            f(&c, "delta_p_mean"),
            want.delta_p_mean,
            1e-6,
            &format!("{name}: delta_p_mean"),
        );
        // The change follows from the two reported perplexities; each is within 1e-6 of the
        // independent value, so the percentage is within ~2e-4 points of the independent one.
        let reported = (f(&c, "perplexity") / f(&c, "reference_perplexity") - 1.0) * 100.0;
        assert!(
            (f(&c, "perplexity_change_pct") - reported).abs() < 1e-9,
            "{name}"
        );
        let change = (want.perplexity / want.reference_perplexity - 1.0) * 100.0;
        assert!(
            (f(&c, "perplexity_change_pct") - change).abs() < 1e-3,
            "{name}: {} vs {change}",
            c["perplexity_change_pct"]
        );
    }
}

#[test]
fn different_tokenizers_are_refused() {
    let out = kiln(&[
        "score",
        "--model",
        fixture("gpt2").to_str().unwrap(),
        "--reference",
        fixture("server_llama").to_str().unwrap(),
        "--text",
        &text(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.contains("kiln: error: the model and the reference tokenize the text differently"),
        "{err}"
    );
    assert!(err.contains("same tokenizer"), "{err}");
}

#[test]
fn json_has_the_documented_fields_and_the_table_its_rows() {
    let (model, reference) = (fixture("gpt2_gguf/model.gguf"), fixture("gpt2"));
    let c = compare_json(&model, &reference, &text(), "16");
    for key in [
        "perplexity",
        "reference_perplexity",
        "perplexity_change_pct",
        "kl_mean",
        "kl_stderr",
        "kl_median",
        "kl_p99",
        "kl_max",
        "top1_agreement",
        "delta_p_mean",
        "delta_p_stderr",
    ] {
        assert!(f(&c, key).is_finite(), "{key}: {c}");
    }
    for key in ["n_scored", "n_windows", "n_tokens", "context"] {
        assert!(c[key].as_u64().is_some_and(|n| n > 0), "{key}: {c}");
    }
    assert_eq!(c["context"], 16);
    assert!(c["model"].is_string() && c["reference"].is_string(), "{c}");
    assert!(f(&c, "kl_stderr") > 0.0);
    let top1 = f(&c, "top1_agreement");
    assert!((0.0..=1.0).contains(&top1), "{top1}");

    let out = kiln(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--text",
        &text(),
        "--context",
        "16",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "reference perplexity",
        "KL divergence mean",
        "KL divergence p99",
        "top-1 agreement",
        "mean Δp",
    ] {
        assert!(table.contains(row), "missing `{row}` in:\n{table}");
    }
}
