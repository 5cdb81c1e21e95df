//! Helpers shared by the real-model tests.

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `models/<rel>` if scripts/fetch-models.sh put it there (`marker`: a file inside a model
/// directory that must exist, or "" for a single-file model). Absent, the test skips with a note,
/// unless KILN_REQUIRE_MODELS is set (as in CI), which makes that a failure.
pub fn real_model(rel: &str, marker: &str) -> Option<PathBuf> {
    let path = root().join("models").join(rel);
    let probe = if marker.is_empty() {
        path.clone()
    } else {
        path.join(marker)
    };
    if !probe.exists() {
        assert!(
            std::env::var("KILN_REQUIRE_MODELS").is_err(),
            "{} is missing: run scripts/fetch-models.sh",
            path.display()
        );
        eprintln!(
            "skipping: {} not found (run scripts/fetch-models.sh)",
            path.display()
        );
        return None;
    }
    Some(path)
}
