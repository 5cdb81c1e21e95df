//! `kiln score`: teacher-forced log-probabilities and perplexity over consecutive windows; with
//! `--reference BASE`, the quality report of the model against a base model over the same
//! windows (perplexities, KL divergence, top-1 agreement, Δp: llama-perplexity --kl-divergence).

use anyhow::{Context, Result};
use serde_json::json;

use kiln_engine::Engine;

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
    #[arg(long, conflicts_with = "reference")]
    moe_stats: bool,
    /// Compare with this base model (a path or hub id, like --model; loaded with the same
    /// --device/--dtype; same tokenizer required): both perplexities, KL(P_ref || P_model) per
    /// token (mean, standard error, median, p99, max), top-1 agreement and the mean Δp of the
    /// correct token. With --json: {perplexity, reference_perplexity, kl_mean, ...}, with
    /// top1_agreement and delta_p_* as fractions.
    #[arg(long, value_name = "BASE")]
    reference: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => anyhow::bail!("give --text or --file"),
    };
    if let Some(reference) = &a.reference {
        return compare(&a, &text, reference);
    }
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

/// `--reference`: both models over the same windows of the same token ids.
fn compare(a: &Args, text: &str, reference: &str) -> Result<()> {
    let (engine, model_path, _) = model_arg::load(&a.common)?;
    let reference_path = model_arg::resolve(Some(reference))?;
    // The reference as it is stored, whatever --quantize does to the model.
    let placement = kiln_nn::Placement {
        quantize: None,
        ..a.common.placement()?
    };
    let base = Engine::load_on(&reference_path, placement, &mut |_, _| {})
        .with_context(|| format!("loading the reference {}", reference_path.display()))?;
    let ids = engine.tokenizer.encode(text, false)?;
    let reference_ids = base.tokenizer.encode(text, false)?;
    same_tokens(&ids, &reference_ids)?;
    let context = a.context.map_or(
        engine
            .info
            .max_context
            .min(base.info.max_context)
            .min(ids.len().max(2)),
        |c| c as usize,
    );
    let c = engine
        .compare(&base, &ids, context, &mut |done, total| {
            if !a.json {
                eprint!("\rwindow {done}/{total}");
            }
        })
        .context("comparing with the reference")?;
    let change_pct = (c.perplexity / c.reference_perplexity - 1.0) * 100.0;
    if a.json {
        let v = json!({
            "model": model_path.display().to_string(),
            "reference": reference_path.display().to_string(),
            "context": context,
            "n_tokens": ids.len(),
            "n_windows": c.n_windows,
            "n_scored": c.n_scored,
            "perplexity": c.perplexity,
            "reference_perplexity": c.reference_perplexity,
            "perplexity_change_pct": change_pct,
            "kl_mean": c.kl.mean,
            "kl_stderr": c.kl.stderr,
            "kl_median": c.kl.median,
            "kl_p99": c.kl.p99,
            "kl_max": c.kl.max,
            "top1_agreement": c.top1_agreement,
            "delta_p_mean": c.delta_p_mean,
            "delta_p_stderr": c.delta_p_stderr,
        });
        println!("{v}");
        return Ok(());
    }
    eprintln!();
    println!(
        "{} tokens, {} windows of {}, {} scored",
        ids.len(),
        c.n_windows,
        context,
        c.n_scored
    );
    let row = |name: &str, value: String| println!("  {name:<22}{value}");
    row("model", model_path.display().to_string());
    row("reference", reference_path.display().to_string());
    row("perplexity", format!("{:.4}", c.perplexity));
    row(
        "reference perplexity",
        format!("{:.4}", c.reference_perplexity),
    );
    row("perplexity change", format!("{change_pct:+.3}%"));
    row(
        "KL divergence mean",
        format!("{:.6} ± {:.6}", c.kl.mean, c.kl.stderr),
    );
    row("KL divergence median", format!("{:.6}", c.kl.median));
    row("KL divergence p99", format!("{:.6}", c.kl.p99));
    row("KL divergence max", format!("{:.6}", c.kl.max));
    row(
        "top-1 agreement",
        format!("{:.3}%", c.top1_agreement * 100.0),
    );
    row(
        "mean Δp (correct)",
        format!(
            "{:+.4}% ± {:.4}%",
            c.delta_p_mean * 100.0,
            c.delta_p_stderr * 100.0
        ),
    );
    Ok(())
}

/// KL divergence only means something over the same token ids: refuse two tokenizers that cut
/// the text differently (a different vocabulary nearly always does).
fn same_tokens(model: &[u32], reference: &[u32]) -> Result<()> {
    if model == reference {
        return Ok(());
    }
    let at = model
        .iter()
        .zip(reference)
        .position(|(m, r)| m != r)
        .unwrap_or(model.len().min(reference.len()));
    let id = |ids: &[u32]| ids.get(at).map_or("end".to_string(), |t| t.to_string());
    anyhow::bail!(
        "the model and the reference tokenize the text differently ({} vs {} tokens, first \
         difference at token {at}: {} vs {}): --reference needs a model with the same tokenizer",
        model.len(),
        reference.len(),
        id(model),
        id(reference)
    )
}
