//! Turning `--model` into a loaded engine: resolve the argument to files (fetching the default
//! model or a hub id when needed), set the thread count, and show a progress bar while loading.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_engine::Engine;

use crate::Common;

struct Bar(ProgressBar);

impl kiln_fetch::Progress for Bar {
    fn start(&self, what: &str, total: Option<u64>) {
        self.0.set_message(what.to_string());
        if let Some(t) = total {
            self.0.set_length(t);
        }
        self.0.set_position(0);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {}
}

fn bar(style: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(style).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// The files `--model` names, fetched if need be.
pub fn resolve(model: Option<&str>) -> Result<PathBuf> {
    let cache = kiln_fetch::default_cache_dir();
    let download = || bar("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})");
    match model {
        None => {
            let pb = download();
            let p = kiln_fetch::default_model(&cache, &Bar(pb.clone()))
                .context("fetching the default model (SmolLM2-135M-Instruct Q4_1)")?;
            pb.finish_and_clear();
            Ok(p)
        }
        Some(m) if kiln_fetch::looks_like_hub_id(m) => {
            let pb = download();
            let p = kiln_fetch::hub_model(m, &cache, &Bar(pb.clone()))
                .with_context(|| format!("fetching `{m}` from the Hugging Face hub"))?;
            pb.finish_and_clear();
            Ok(p)
        }
        Some(m) => {
            let p = PathBuf::from(m);
            if !p.exists() {
                anyhow::bail!("model `{m}` not found: no such file or directory");
            }
            Ok(p)
        }
    }
}

pub fn set_threads(threads: Option<u16>) -> Result<usize> {
    let n = threads
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("starting the thread pool")?;
    Ok(n)
}

/// Sets up threads, resolves and loads the model with a progress bar.
pub fn load(common: &Common) -> Result<(Engine, PathBuf, usize)> {
    let threads = set_threads(common.threads)?;
    let placement = common.placement()?;
    let path = resolve(common.model.as_deref())?;
    let pb = bar("loading {msg} [{bar:30}] {pos}/{len} layers");
    pb.set_message(
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    let engine = Engine::load_on(&path, placement, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })
    .with_context(|| format!("loading {}", path.display()))?;
    pb.finish_and_clear();
    Ok((engine, path, threads))
}
