//! `kiln generate` with encoder-decoder fixtures (tools/make_seq2seq_fixtures.py): the JSON
//! `token_ids` are the decoder's generated ids as transformers produces them (greedy and 4-beam),
//! and seq2seq misuse is one clear error line.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

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

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn read_json(name: &str, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join(file)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn stdout_json(out: &Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln failed: {err}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

#[test]
fn generate_greedy_json_token_ids() {
    // Expected ids: transformers' greedy generations, without the decoder start token and
    // without the final EOS (kiln reports it as finish_reason "stop").
    let cases: &[(&str, &[u64], &str)] = &[
        ("t5", &[13; 12], "length"),
        (
            "bart",
            &[0, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171],
            "stop",
        ),
        ("marian", &[438; 11], "stop"),
    ];
    for &(name, want, reason) in cases {
        let dir = fixture(name);
        let text = read_json(name, "reference.json")["source_text"]
            .as_str()
            .unwrap()
            .to_string();
        let out = kiln(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            &text,
            "--json",
            "--temperature",
            "0",
            "-n",
            "12",
            "-t",
            "1",
        ]);
        let v = stdout_json(&out);
        assert_eq!(ids(&v["token_ids"]), want, "{name}");
        assert_eq!(v["finish_reason"], reason, "{name}");
        assert_eq!(v["prompt_tokens"], 26, "{name}: source tokens");
    }
}

#[test]
fn generate_four_beams_json_matches_transformers() {
    let dir = fixture("flan_t5");
    let text = read_json("flan_t5", "reference.json")["source_text"]
        .as_str()
        .unwrap()
        .to_string();
    let run = &read_json("flan_t5", "beam.json")["runs"][1];
    let out = kiln(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        &text,
        "--json",
        "-n",
        "12",
        "--num-beams",
        "4",
        "--length-penalty",
        "0.6",
        "--early-stopping",
        "true",
        "--num-return-sequences",
        "2",
        "-t",
        "1",
    ]);
    let v = stdout_json(&out);
    let seqs = v["sequences"].as_array().unwrap();
    assert_eq!(seqs.len(), 2);
    for (s, w) in seqs.iter().zip(run["sequences"].as_array().unwrap()) {
        // Flan-T5 hits no EOS here: 12 tokens after the start token.
        assert_eq!(ids(&s["token_ids"]), ids(w)[1..], "{s}");
        assert_eq!(s["finish_reason"], "length");
    }
}

fn assert_clean_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn seq2seq_misuse_is_a_clear_error() {
    let dir = fixture("t5");
    let d = dir.to_str().unwrap();
    let out = kiln(&["generate", "--model", d, "--prompt", "hi", "--chat"]);
    assert_clean_error(&out, "encoder-decoder model");
    let out = kiln(&["generate", "--model", d, "--prompt", ""]);
    assert_clean_error(&out, "source text is empty");
    let long = "free software ".repeat(40);
    let out = kiln(&["generate", "--model", d, "--prompt", &long]);
    assert_clean_error(&out, "at most 64 positions");
}
