//! `kiln score` and `kiln generate` end to end on the GPT-2 and BLOOM fixtures
//! (tools/make_decoder_fixtures.py): each fixture directory carries a real byte-level BPE
//! `tokenizer.json`, and reference.json records transformers' perplexity of `score_text` and the
//! greedy continuation of `prompt_text` under it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).expect("reference");
    serde_json::from_str(&text).expect("reference.json")
}

/// Runs `kiln args...` and parses its stdout as one JSON object.
fn kiln_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env(
            "KILN_CACHE",
            std::env::temp_dir().join("kiln-cli-test-cache"),
        )
        .output()
        .expect("run kiln");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kiln {args:?}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

#[test]
fn score_gives_the_transformers_perplexity() {
    for name in ["gpt2", "bloom"] {
        let r = reference(name);
        let dir = fixture(name);
        let text = r["score_text"].as_str().expect("score_text");
        let got = kiln_json(&[
            "score",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            text,
            "--json",
        ]);
        assert_eq!(
            ids(&got["token_ids"]),
            ids(&r["score_ids"]),
            "{name}: tokenization"
        );
        let (ppl, want) = (
            got["perplexity"].as_f64().expect("perplexity"),
            r["score_perplexity"].as_f64().expect("score_perplexity"),
        );
        assert!(
            ((ppl - want) / want).abs() < 1e-4,
            "{name}: perplexity {ppl}, transformers {want}"
        );
    }
}

#[test]
fn greedy_generate_matches_transformers() {
    for name in ["gpt2", "bloom"] {
        let r = reference(name);
        let want = ids(&r["prompt_greedy_ids"]);
        let n = want.len().to_string();
        let got = kiln_json(&[
            "generate",
            "--model",
            fixture(name).to_str().unwrap(),
            "--prompt",
            r["prompt_text"].as_str().expect("prompt_text"),
            "--temperature",
            "0",
            "-n",
            &n,
            "--json",
        ]);
        assert_eq!(ids(&got["token_ids"]), want, "{name}: greedy continuation");
        if name == "bloom" {
            assert_eq!(got["text"], r["prompt_greedy_text"], "{name}: text");
        }
    }
}

/// GGUF files carry their tokenizer as `tokenizer.ggml.*` (gpt2 BPE, pre "gpt-2").
#[test]
fn score_on_gguf_gives_the_transformers_perplexity() {
    for name in ["gpt2_gguf", "bloom_gguf"] {
        let r = reference(name);
        let path = fixture(name).join("model.gguf");
        let text = r["score_text"].as_str().expect("score_text");
        let got = kiln_json(&[
            "score",
            "--model",
            path.to_str().unwrap(),
            "--text",
            text,
            "--json",
        ]);
        assert_eq!(
            ids(&got["token_ids"]),
            ids(&r["score_ids"]),
            "{name}: tokenization"
        );
        let (ppl, want) = (
            got["perplexity"].as_f64().expect("perplexity"),
            r["score_perplexity"].as_f64().expect("score_perplexity"),
        );
        assert!(
            ((ppl - want) / want).abs() < 1e-4,
            "{name}: perplexity {ppl}, transformers {want}"
        );
    }
}

/// BLOOM (ALiBi) scores a text of ~3x its `seq_length` in one window: no position table to run
/// out of, and the perplexity is transformers'.
#[test]
fn bloom_scores_past_its_training_length() {
    let r = reference("bloom");
    let dir = fixture("bloom");
    let text = r["long_score_text"].as_str().expect("long_score_text");
    let got = kiln_json(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--text",
        text,
        "--json",
    ]);
    let want_ids = ids(&r["long_score_ids"]);
    assert_eq!(ids(&got["token_ids"]), want_ids);
    assert!(want_ids.len() > 2 * 16, "the fixture's seq_length is 16");
    assert_eq!(got["n_windows"], 1);
    assert_eq!(got["context"].as_u64(), Some(want_ids.len() as u64));
    let (ppl, want) = (
        got["perplexity"].as_f64().expect("perplexity"),
        r["long_score_perplexity"]
            .as_f64()
            .expect("long_score_perplexity"),
    );
    assert!(
        ppl.is_finite() && ((ppl - want) / want).abs() < 1e-4,
        "perplexity {ppl}, transformers {want}"
    );
}
