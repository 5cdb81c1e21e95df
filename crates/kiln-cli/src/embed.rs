//! `kiln embed` and `kiln similarity`: sentence embeddings from encoder models (BERT, RoBERTa,
//! XLM-R, DistilBERT, MiniLM) with sentence-transformers' pooling conventions.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_engine::Encoder;
use kiln_models::pooling::{cosine, Pooling, PoolingMode};
use serde_json::json;

use crate::{model_arg, Common};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// A text to embed (repeatable).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    text: Vec<String>,
    /// Embed every line of this file (one input per line).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Pooling (default: the model's modules.json / 1_Pooling, else mean).
    #[arg(long, value_parser = ["mean", "cls", "max"])]
    pooling: Option<String>,
    /// L2-normalize the embeddings (default: when modules.json has a Normalize module).
    #[arg(long)]
    normalize: bool,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Fail on inputs longer than the model's maximum instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Print {"model", "dim", "embeddings", "timings"} as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SimilarityArgs {
    #[command(flatten)]
    common: Common,
    /// First text.
    a: String,
    /// Second text.
    b: String,
    /// Pooling (default: the model's).
    #[arg(long, value_parser = ["mean", "cls", "max"])]
    pooling: Option<String>,
    /// Fail on inputs longer than the model's maximum instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
}

/// Loads an encoder from `--model` (which is required: the default model is a decoder).
pub fn load_encoder(common: &Common) -> Result<(Encoder, std::path::PathBuf)> {
    model_arg::set_threads(common.threads)?;
    let placement = common.placement()?;
    let Some(m) = common.model.as_deref() else {
        anyhow::bail!("give --model: a sentence-transformers or BERT-family model directory (e.g. models/all-MiniLM-L6-v2)");
    };
    let path = model_arg::resolve(Some(m))?;
    if !path.is_dir() || !(path.join("config.json").exists() || path.join("modules.json").exists())
    {
        anyhow::bail!("{}: not an encoder model directory (expected config.json, model.safetensors, tokenizer.json)", path.display());
    }
    let enc = Encoder::load_on(&path, placement, &mut |_, _| {})
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((enc, path))
}

pub fn pooling_for(enc: &Encoder, mode: Option<&str>, normalize: bool) -> Pooling {
    let mut p = enc.pooling.clone();
    if let Some(m) = mode.and_then(PoolingMode::parse) {
        p.modes = vec![m];
    }
    p.normalize |= normalize;
    p
}

fn report_truncation(enc: &Encoder, truncated: &[(usize, usize)]) {
    for (i, n) in truncated {
        eprintln!(
            "kiln: input {} has {n} tokens: truncated to the model's maximum of {}",
            i + 1,
            enc.max_tokens
        );
    }
}

pub fn run(a: Args) -> Result<()> {
    let texts: Vec<String> = match &a.file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => a.text.clone(),
    };
    if texts.is_empty() {
        anyhow::bail!("no inputs: give --text or a non-empty --file");
    }
    let (enc, path) = load_encoder(&a.common)?;
    let pooling = pooling_for(&enc, a.pooling.as_deref(), a.normalize);
    let e = enc.embed(&texts, &pooling, a.batch_size as usize, !a.no_truncate)?;
    report_truncation(&enc, &e.truncated);
    let dim = pooling.dim(enc.model.cfg.hidden);
    if a.json {
        let secs = e.embed_ms / 1e3;
        let v = json!({
            "model": model_name(&path),
            "dim": dim,
            "embeddings": e.vectors,
            "timings": {
                "embed_ms": e.embed_ms,
                "n_inputs": texts.len(),
                "n_tokens": e.n_tokens,
                "inputs_per_s": texts.len() as f64 / secs.max(1e-9),
                "tokens_per_s": e.n_tokens as f64 / secs.max(1e-9),
            },
        });
        println!("{v}");
    } else {
        for v in &e.vectors {
            println!("{}", serde_json::to_string(v)?);
        }
        eprintln!(
            "{} inputs, {} tokens, dim {dim}: {:.1} ms",
            texts.len(),
            e.n_tokens,
            e.embed_ms
        );
    }
    Ok(())
}

pub fn similarity(a: SimilarityArgs) -> Result<()> {
    let (enc, _) = load_encoder(&a.common)?;
    let pooling = pooling_for(&enc, a.pooling.as_deref(), false);
    let e = enc.embed(&[a.a.clone(), a.b.clone()], &pooling, 2, !a.no_truncate)?;
    report_truncation(&enc, &e.truncated);
    println!("{:.6}", cosine(&e.vectors[0], &e.vectors[1]));
    Ok(())
}

pub fn model_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
