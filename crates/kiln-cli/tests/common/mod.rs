//! What the `kiln` binary's integration tests share: fixtures, running the binary with two
//! threads and a private cache, and reading its `--json` output.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path)
}

/// `kiln ARGS --threads 2` with the test cache.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .args(["--threads", "2"])
        .env(
            "KILN_CACHE",
            std::env::temp_dir().join("kiln-cli-test-cache"),
        )
        .output()
        .expect("run kiln")
}

/// Stdout of a run that must succeed without a panic.
pub fn kiln_ok(args: &[&str]) -> String {
    let out = kiln(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln {args:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON of a `--json` run's last stdout line.
pub fn kiln_json(args: &[&str]) -> Value {
    let out = kiln_ok(args);
    serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("kiln {args:?}: stdout is not JSON ({e}): {out}"))
}

/// A number field of a JSON object.
pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}
