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

/// `--moe-stats` on the MoE fixtures (tools/make_moe_fixtures.py): the perplexity transformers
/// gives, and per sparse layer expert counts that add up to top_k picks per routed token.
#[test]
fn moe_stats_in_score_and_generate_json() {
    for name in ["mixtral", "qwen3_moe"] {
        let r = reference(name);
        let dir = fixture(name);
        let text = r["score_text"].as_str().expect("score_text");
        let top_k = r["top_k"].as_u64().unwrap();
        let sparse = r["sparse_layers"].clone();
        let check = |v: &Value| {
            let m = &v["moe_stats"];
            let layers = m["layers"].as_array().expect("layers");
            let got: Vec<Value> = layers.iter().map(|l| l["layer"].clone()).collect();
            assert_eq!(Value::from(got), sparse, "{name}: sparse layers");
            for l in layers {
                let sum: u64 = ids(&l["expert_counts"]).iter().sum();
                assert_eq!(sum, top_k * l["tokens"].as_u64().unwrap(), "{name}: {l}");
            }
            assert!(m["aux_loss"].as_f64().unwrap() > 0.0);
            assert_eq!(m["router_aux_loss_coef"], r["router_aux_loss_coef"]);
        };
        let s = kiln_json(&[
            "score",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            text,
            "--json",
            "--moe-stats",
        ]);
        let ppl = s["perplexity"].as_f64().unwrap();
        let want = r["score_perplexity"].as_f64().unwrap();
        assert!(
            (ppl - want).abs() / want < 1e-4,
            "{name}: perplexity {ppl} vs {want}"
        );
        check(&s);
        // Sampling (greedy) and beam search both report.
        for beams in ["1", "2"] {
            check(&kiln_json(&[
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt",
                "The kiln was",
                "-n",
                "4",
                "--temperature",
                "0",
                "--num-beams",
                beams,
                "--json",
                "--moe-stats",
            ]));
        }
    }
    // A dense model: a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "score",
            "--model",
            fixture("gpt2").to_str().unwrap(),
            "--text",
            "a b",
            "--moe-stats",
        ])
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("not a mixture-of-experts model"), "{e}");
}
