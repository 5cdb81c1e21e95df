//! Hugging Face hub repos by id, for users with a network.
//!
//! Files come from `{HF_ENDPOINT or https://huggingface.co}/{repo_id}/resolve/main/{file}`,
//! with `Authorization: Bearer $HF_TOKEN` when that is set (gated and private repos), into
//! `<cache>/hub/{owner}--{name}/`. We fetch only what kiln loads — config, tokenizer files and
//! safetensors weights (one file, or an index plus its shards) — never `.bin`/`.pt` pickles or
//! other formats a repo may also carry. Rejected alternative: the `hf-hub` crate, whose cache
//! layout (blobs + symlinked snapshots) and tokio-or-ureq feature matrix buy us nothing here.
//!
//! Files already present are not fetched again; a repo whose config and complete weights are
//! present is returned without touching the network, so a cached model works offline. Weights
//! are fetched last, which makes "weights complete" mean "everything was attempted".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::download::{self, io_err};
use crate::{is_repo_id, Error, Progress, Result};

const REQUIRED: &[&str] = &["config.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    // sentence-transformers: pooling, normalization and the sequence limit of embedding models.
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];
const WEIGHTS: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

struct Hub {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
    repo: String,
    dir: PathBuf,
}

/// Download `repo_id` (`owner/name`) from the Hugging Face hub into
/// `<cache>/hub/{owner}--{name}/` and return that directory. Honours `HF_ENDPOINT` (a mirror)
/// and `HF_TOKEN`. A 404 for an optional file (tokenizer files, generation config) is fine; for
/// config.json or the weights it is an error naming the file and the repo.
pub fn hub_model(repo_id: &str, cache: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    if !is_repo_id(repo_id) {
        return Err(Error::BadRepoId(repo_id.to_string()));
    }
    let dir = cache.join("hub").join(repo_id.replace('/', "--"));
    if dir.join("config.json").is_file() && weights_complete(&dir)? {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let hub = Hub {
        agent: download::agent()?,
        endpoint: env("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| "https://huggingface.co".to_string()),
        token: env("HF_TOKEN"),
        repo: repo_id.to_string(),
        dir,
    };
    for file in REQUIRED {
        hub.fetch(file, true, progress)?;
    }
    for file in OPTIONAL {
        hub.fetch(file, false, progress)?;
    }
    hub.fetch_weights(progress)?;
    Ok(hub.dir)
}

impl Hub {
    fn url(&self, file: &str) -> String {
        format!("{}/{}/resolve/main/{file}", self.endpoint, self.repo)
    }

    /// Fetch `file` unless present. Ok(false) when it is optional and the repo has none.
    fn fetch(&self, file: &str, required: bool, progress: &dyn Progress) -> Result<bool> {
        let dest = self.dir.join(file);
        if dest.is_file() {
            return Ok(true);
        }
        let url = self.url(file);
        let what = format!("{}/{file}", self.repo);
        match download::download_to(
            &self.agent,
            &url,
            self.token.as_deref(),
            &dest,
            &what,
            progress,
        ) {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) if !required => Ok(false),
            Err(Error::NotFound { url }) => Err(Error::HubFileMissing {
                repo: self.repo.clone(),
                file: file.to_string(),
                url,
            }),
            Err(e) => Err(e),
        }
    }

    fn fetch_weights(&self, progress: &dyn Progress) -> Result<()> {
        if self.dir.join(WEIGHTS).is_file() {
            return Ok(());
        }
        // A cached index means an earlier run found a sharded repo: go straight to its shards.
        let sharded = self.dir.join(INDEX).is_file()
            || (!self.fetch(WEIGHTS, false, progress)? && self.fetch(INDEX, false, progress)?);
        if !sharded {
            if self.dir.join(WEIGHTS).is_file() {
                return Ok(());
            }
            return Err(Error::HubNoWeights {
                repo: self.repo.clone(),
                endpoint: self.endpoint.clone(),
            });
        }
        for shard in shard_names(&self.dir.join(INDEX))? {
            self.fetch(&shard, true, progress)?;
        }
        Ok(())
    }
}

/// Config-independent check that the weights are all on disk.
fn weights_complete(dir: &Path) -> Result<bool> {
    if dir.join(WEIGHTS).is_file() {
        return Ok(true);
    }
    let index = dir.join(INDEX);
    if !index.is_file() {
        return Ok(false);
    }
    Ok(shard_names(&index)?.iter().all(|s| dir.join(s).is_file()))
}

/// The distinct shard files named by a safetensors index's `weight_map`.
fn shard_names(index: &Path) -> Result<BTreeSet<String>> {
    let json = download::read_json_file(index)?;
    let bad = |what: String| Error::BadResponse {
        url: index.display().to_string(),
        what,
    };
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no `weight_map` object".to_string()))?;
    let mut shards = BTreeSet::new();
    for value in map.values() {
        let name = value
            .as_str()
            .ok_or_else(|| bad(format!("weight_map value {value} is not a file name")))?;
        // Shards sit beside the index; anything else could write outside the model directory.
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains('/')
            && !name.contains('\\');
        if !plain {
            return Err(bad(format!("shard name {name:?} is not a plain file name")));
        }
        shards.insert(name.to_string());
    }
    if shards.is_empty() {
        return Err(bad("empty `weight_map`".to_string()));
    }
    Ok(shards)
}
