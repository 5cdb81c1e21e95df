//! The `kiln` binary's contract for bad input: one clear line on stderr, a non-zero exit
//! (2 for usage errors, 1 otherwise), never a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env(
            "KILN_CACHE",
            std::env::temp_dir().join("kiln-cli-test-cache"),
        )
        .output()
        .expect("run kiln")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> Option<PathBuf> {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        assert!(
            std::env::var("KILN_REQUIRE_MODELS").is_err(),
            "model missing: run scripts/fetch-models.sh"
        );
        None
    }
}

fn assert_clean_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_model_file() {
    let out = kiln(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert_clean_error(&out, 1, "not found");
}

#[test]
fn unknown_architecture() {
    let d = tmp("arch");
    std::fs::write(
        d.join("config.json"),
        r#"{"architectures": ["FancyNetForCausalLM"]}"#,
    )
    .unwrap();
    let out = kiln(&["generate", "--model", d.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&out, 1, "unknown architecture `FancyNetForCausalLM`");
}

#[test]
fn truncated_safetensors() {
    let d = tmp("trunc-st");
    let fx = root().join("tests/fixtures/llama");
    std::fs::copy(fx.join("config.json"), d.join("config.json")).unwrap();
    let bytes = std::fs::read(fx.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let out = kiln(&["score", "--model", d.to_str().unwrap(), "--text", "hi"]);
    assert_clean_error(&out, 1, "not a valid safetensors file");
}

#[test]
fn truncated_gguf() {
    let Some(m) = model() else { return };
    let d = tmp("trunc-gguf");
    let bytes = std::fs::read(m).unwrap();
    let p = d.join("cut.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let out = kiln(&["generate", "--model", p.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&out, 1, "cut.gguf");
    std::fs::write(&p, b"not a gguf file at all").unwrap();
    assert_clean_error(
        &kiln(&["generate", "--model", p.to_str().unwrap(), "--prompt", "hi"]),
        1,
        "error",
    );
}

#[test]
fn prompt_longer_than_context() {
    let Some(m) = model() else { return };
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .unwrap()
        .repeat(2);
    let f = tmp("long").join("long.txt");
    std::fs::write(&f, &text).unwrap();
    let out = kiln(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        &text,
        "--max-tokens",
        "1",
    ]);
    assert_clean_error(&out, 1, "context is 8192 tokens");
    let out = kiln(&[
        "score",
        "--model",
        m.to_str().unwrap(),
        "--file",
        f.to_str().unwrap(),
        "--context",
        "9000",
    ]);
    assert_clean_error(&out, 1, "context is 8192 tokens");
}

#[test]
fn invalid_flag_values() {
    assert_clean_error(
        &kiln(&["generate", "--prompt", "hi", "--threads", "0"]),
        2,
        "--threads",
    );
    assert_clean_error(
        &kiln(&["generate", "--prompt", "hi", "--max-tokens", "lots"]),
        2,
        "--max-tokens",
    );
    assert_clean_error(
        &kiln(&["bench", "--prompt-tokens", "0"]),
        2,
        "--prompt-tokens",
    );
    assert_clean_error(
        &kiln(&["generate", "--prompt", "hi", "--temperature=-1"]),
        1,
        "temperature",
    );
    assert_clean_error(
        &kiln(&["generate", "--prompt", "hi", "--top-p", "0"]),
        1,
        "top_p",
    );
    assert_clean_error(
        &kiln(&["score", "--text", "a", "--context", "1"]),
        2,
        "--context",
    );
    assert_clean_error(&kiln(&["frobnicate"]), 2, "frobnicate");
}

#[test]
fn generate_json_has_the_documented_fields() {
    let Some(m) = model() else { return };
    let out = kiln(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--json",
        "--threads",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "text",
        "token_ids",
        "prompt_tokens",
        "finish_reason",
        "timings",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 8);
    assert_eq!(v["finish_reason"], "length");
    let out = kiln(&[
        "score",
        "--model",
        m.to_str().unwrap(),
        "--text",
        "The quick brown fox jumps over the lazy dog.",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("score JSON");
    assert_eq!(
        v["token_logprobs"].as_array().unwrap().len() + 1,
        v["token_ids"].as_array().unwrap().len()
    );
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
}

#[test]
fn beam_flags_are_checked_before_loading() {
    let g = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", "/nonexistent.gguf", "--prompt", "hi"];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    assert_clean_error(&g(&["--num-beams", "0"]), 2, "--num-beams");
    assert_clean_error(
        &g(&["--num-beams", "2", "--early-stopping", "sometimes"]),
        2,
        "--early-stopping",
    );
    assert_clean_error(
        &g(&["--num-beams", "2", "--num-return-sequences", "3"]),
        1,
        "num_return_sequences (3) must be between 1 and num_beams (2)",
    );
    assert_clean_error(&g(&["--num-return-sequences", "2"]), 1, "--num-beams");
    assert_clean_error(
        &g(&["--num-beams", "2", "--temperature", "0.7"]),
        1,
        "--temperature (beam sampling) is not supported",
    );
    assert_clean_error(&g(&["--num-beams", "2", "--stop", "x"]), 1, "--stop");
}

#[test]
fn beam_search_json_lists_every_sequence() {
    let Some(m) = model() else { return };
    let out = kiln(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "6",
        "--num-beams",
        "3",
        "--num-return-sequences",
        "2",
        "--length-penalty",
        "-0.5",
        "--json",
        "--threads",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let seqs = v["sequences"].as_array().expect("sequences");
    assert_eq!(seqs.len(), 2);
    assert_eq!(v["token_ids"], seqs[0]["token_ids"]);
    assert_eq!(v["text"], seqs[0]["text"]);
    let s0 = seqs[0]["score"].as_f64().unwrap();
    let s1 = seqs[1]["score"].as_f64().unwrap();
    assert!(s0 >= s1 && s0 < 0.0, "scores {s0} {s1}");
    assert_ne!(seqs[0]["token_ids"], seqs[1]["token_ids"]);
    for s in seqs {
        let n = s["token_ids"].as_array().unwrap().len();
        assert!((1..=6).contains(&n), "{s}");
    }
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
}

/// `--device`: an unknown device is a usage error; CUDA without the feature (or without a
/// driver/GPU) is one line saying what to do, on every model command, before any model loads.
#[test]
fn device_errors_are_one_clear_line() {
    let out = kiln(&["generate", "--device", "tpu", "-p", "hi"]);
    assert_clean_error(&out, 2, "unknown device `tpu`");
    let fixture = root().join("tests/fixtures/llama");
    let fixture = fixture.to_str().unwrap();
    let minilm = root().join("tests/fixtures/minilm");
    let minilm = minilm.to_str().unwrap();
    let runs: [&[&str]; 6] = [
        &["generate", "-m", fixture, "--device", "cuda", "-p", "hi"],
        &[
            "score", "-m", fixture, "--device", "cuda:1", "--text", "a b c",
        ],
        &["bench", "-m", fixture, "--device", "cuda"],
        &["embed", "-m", minilm, "--device", "cuda", "--text", "hi"],
        &["classify", "-m", minilm, "--device", "cuda", "--text", "hi"],
        &["serve", "-m", fixture, "--device", "cuda", "--port", "0"],
    ];
    let needle = if cfg!(feature = "cuda") {
        "CUDA"
    } else {
        "--features cuda"
    };
    for args in runs {
        let out = kiln(args);
        assert_clean_error(&out, 1, needle);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim().lines().count() <= 2, "{args:?}: {err}");
    }
    let out = kiln(&["generate", "-m", fixture, "--dtype", "bf16", "-p", "hi"]);
    assert_clean_error(&out, 1, "--dtype bf16 is for GPUs");
}
