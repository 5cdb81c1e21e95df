//! `kiln score`: teacher-forced log-probabilities and perplexity over consecutive windows.

use anyhow::{Context, Result};
use serde_json::json;

use crate::{model_arg, Common};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// The text to score.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    text: Option<String>,
    /// Read the text to score from this file.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Window length in tokens; each window is scored on its own (default: the whole text, up
    /// to the model's context).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    context: Option<u32>,
    /// Print {token_ids, token_logprobs, perplexity, ...} as JSON.
    #[arg(long)]
    json: bool,
    /// A mixture-of-experts model: report each sparse layer's expert counts, load balance,
    /// router entropy and the auxiliary loss (a table on stderr, or `moe_stats` in --json).
    #[arg(long)]
    moe_stats: bool,
}

pub fn run(a: Args) -> Result<()> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => anyhow::bail!("give --text or --file"),
    };
    let (engine, _, _) = model_arg::load(&a.common)?;
    if a.moe_stats {
        crate::moe_stats::report(&engine.model, &engine.info.architecture)?;
        engine.model.reset_moe_stats();
    }
    let ids = engine.tokenizer.encode(&text, false)?;
    let context = a
        .context
        .map_or(engine.info.max_context.min(ids.len().max(2)), |c| {
            c as usize
        });
    let s = engine.score(&ids, context, &mut |done, total| {
        if !a.json {
            eprint!("\rwindow {done}/{total}");
        }
    })?;
    let moe = if a.moe_stats {
        Some(crate::moe_stats::report(
            &engine.model,
            &engine.info.architecture,
        )?)
    } else {
        None
    };
    if a.json {
        let mut v = json!({
            "token_ids": s.token_ids,
            "token_logprobs": s.token_logprobs,
            "perplexity": s.perplexity,
            "context": context,
            "n_windows": s.n_windows,
            "n_scored": s.token_logprobs.len(),
        });
        if let Some(m) = &moe {
            v["moe_stats"] = crate::moe_stats::to_json(m);
        }
        println!("{v}");
    } else {
        eprintln!();
        println!(
            "{} tokens, {} windows of {}, {} scored: perplexity {:.4}",
            ids.len(),
            s.n_windows,
            context,
            s.token_logprobs.len(),
            s.perplexity
        );
        if let Some(m) = &moe {
            crate::moe_stats::print(m);
        }
    }
    Ok(())
}
