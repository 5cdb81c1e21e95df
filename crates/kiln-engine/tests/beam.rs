//! Beam search against transformers 5.24 `generate(num_beams=...)` on the tiny causal fixtures
//! (tests/fixtures/<name>/beam.json, made by tools/make_beam_fixtures.py): for every recorded
//! setting the returned hypotheses must be token-for-token identical, in the same order, with
//! scores within 1e-4 (relative above 1). The fixture script asserts every decisive top-k gap is >= 1e-3, so float
//! rounding cannot legitimately change a choice.

use std::path::PathBuf;

use kiln_engine::{beam_search, BeamModel, BeamParams, CausalBeam, EarlyStopping};
use serde_json::Value;

const MODELS: &[&str] = &["llama", "llama_tied_mqa", "mistral", "qwen2"];

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id array")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn params(p: &Value) -> BeamParams {
    let n = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    BeamParams {
        num_beams: n("num_beams"),
        max_new_tokens: n("max_new_tokens"),
        length_penalty: p["length_penalty"].as_f64().expect("length_penalty") as f32,
        early_stopping: match &p["early_stopping"] {
            Value::Bool(true) => EarlyStopping::WhenFull,
            Value::Bool(false) => EarlyStopping::Heuristic,
            Value::String(s) if s == "never" => EarlyStopping::Never,
            other => panic!("early_stopping {other}"),
        },
        no_repeat_ngram_size: n("no_repeat_ngram_size"),
        num_return_sequences: n("num_return_sequences"),
        min_new_tokens: n("min_new_tokens"),
        eos: ids(&p["eos_token_id"]),
    }
}

#[test]
fn beam_search_matches_transformers() {
    let mut n_checked = 0;
    for name in MODELS {
        let dir = fixture_dir(name);
        let text = std::fs::read_to_string(dir.join("beam.json")).expect("beam.json");
        let fx: Value = serde_json::from_str(&text).expect("valid beam.json");
        let model = kiln_models::load(&dir, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .model;
        let causal = CausalBeam::new(&model);
        for s in fx["settings"].as_array().expect("settings") {
            let setting = s["name"].as_str().expect("name");
            let p = params(&s["params"]);
            let prompt = ids(&s["prompt"]);
            let (cache, logits) = causal.prefill(&prompt).expect("prefill");
            let got = beam_search(&causal, cache, &logits, &prompt, &p)
                .unwrap_or_else(|e| panic!("{name}/{setting}: {e}"));
            let want = s["sequences"].as_array().expect("sequences");
            assert_eq!(
                got.len(),
                want.len(),
                "{name}/{setting}: number of hypotheses"
            );
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(
                    g.tokens,
                    ids(&w["tokens"]),
                    "{name}/{setting}: hypothesis {i} tokens"
                );
                let ws = w["score"].as_f64().expect("score") as f32;
                // Absolute for ordinary scores; relative where length_penalty < 0 multiplies
                // the summed log-probability by a power of the length (scores in the hundreds).
                assert!(
                    (g.score - ws).abs() < 1e-4 * ws.abs().max(1.0),
                    "{name}/{setting}: hypothesis {i} score {} vs transformers {ws}",
                    g.score
                );
                let last_is_eos = g.tokens.last().is_some_and(|t| p.eos.contains(t));
                assert_eq!(
                    g.ended_by_eos, last_is_eos,
                    "{name}/{setting}: hypothesis {i}"
                );
            }
            n_checked += 1;
        }
    }
    assert!(n_checked >= 4 * 10, "only {n_checked} settings checked");
}

/// Stepping beams packed in one forward pass gives each beam the logits it would get alone.
#[test]
fn packed_step_equals_separate_steps() {
    let dir = fixture_dir("llama");
    let model = kiln_models::load(&dir, &mut |_, _| {}).expect("load").model;
    let causal = CausalBeam::new(&model);
    let (a, _) = causal.prefill(&[5, 6, 7]).expect("prefill");
    let (b, _) = causal.prefill(&[9, 10, 11, 12, 13]).expect("prefill");
    let mut packed = vec![a.clone(), b.clone()];
    let together = causal.step(&mut packed, &[20, 21]).expect("packed step");
    let alone_a = causal.step(&mut [a], &[20]).expect("step a");
    let alone_b = causal.step(&mut [b], &[21]).expect("step b");
    for (x, y) in together[0].iter().zip(&alone_a[0]) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    for (x, y) in together[1].iter().zip(&alone_b[0]) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    assert_eq!(packed[0].len(), 4);
    assert_eq!(packed[1].len(), 6);
}
