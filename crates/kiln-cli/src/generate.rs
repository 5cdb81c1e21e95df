//! `kiln generate`: stream a completion for a prompt, or print one JSON object with `--json`.
//! With `--num-beams N > 1` it runs beam search (transformers' semantics) and prints at the end.
//! Encoder-decoder models (T5, BART, Marian) take the prompt as their source text, both ways.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use kiln_engine::{BeamParams, EarlyStopping, EngineConfig, EngineHandle, SamplingParams};
use serde_json::json;

use crate::{model_arg, Common};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// The prompt text.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Sampling temperature; 0 picks the most likely token every time (greedy). [default: 0.8;
    /// with --num-beams the search is deterministic and only 0 is accepted]
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise tokens already present in prompt or output (1 = off, HF semantics).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// OpenAI frequency penalty over generated tokens (-2..2).
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// OpenAI presence penalty over generated tokens (-2..2).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Random seed, for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text is generated (repeatable); it is not included in the output.
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object {text, token_ids, prompt_tokens, finish_reason, timings} at the end
    /// instead of streaming text (with beams, plus `sequences`: every returned hypothesis).
    #[arg(long)]
    json: bool,
    /// A mixture-of-experts model: report each sparse layer's expert counts, load balance,
    /// router entropy and the auxiliary loss over every token run (with beams, every beam's),
    /// as a table on stderr, or `moe_stats` in --json.
    #[arg(long)]
    moe_stats: bool,
    #[command(flatten)]
    beams: BeamArgs,
}

/// Beam search (transformers `generate(num_beams=...)`); top-k/top-p/min-p do not apply to it.
#[derive(clap::Args)]
struct BeamArgs {
    /// Beam search with this many beams (1 = off: greedy or sampling).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    num_beams: u32,
    /// Beam search: a finished hypothesis scores sum(logprobs) / length^F (>0 favours longer).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f32,
    /// Beam search: true (stop once num-beams hypotheses finished), false (stop when no running
    /// beam can win, HF's default heuristic) or never.
    #[arg(long, default_value = "false", value_parser = parse_early_stopping)]
    early_stopping: EarlyStopping,
    /// Beam search: never repeat an n-gram of this size (0 = off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Beam search: hypotheses to print, best first (<= --num-beams).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    num_return_sequences: u32,
}

fn parse_early_stopping(s: &str) -> std::result::Result<EarlyStopping, String> {
    s.parse().map_err(|e: kiln_engine::Error| e.to_string())
}

pub fn run(a: Args) -> Result<()> {
    if a.beams.num_beams > 1 {
        return run_beams(a);
    }
    if a.beams.num_return_sequences > 1 {
        anyhow::bail!("--num-return-sequences needs beam search (--num-beams > 1)");
    }
    let params = SamplingParams {
        temperature: a.temperature.unwrap_or(0.8),
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        frequency_penalty: a.frequency_penalty,
        presence_penalty: a.presence_penalty,
        seed: a.seed,
        max_tokens: a.max_tokens as usize,
        stop: a.stop.clone(),
        ignore_eos: false,
    };
    params.validate()?;
    let (engine, _, _) = model_arg::load(&a.common)?;
    // A handle on the model, which shares its routers' counters with the engine that runs it
    // (the engine moves into the serving loop below).
    let moe_model = if a.moe_stats {
        crate::moe_stats::report(&engine.model, &engine.info.architecture)?;
        Some((engine.model.clone(), engine.info.architecture.clone()))
    } else {
        None
    };
    let prompt = engine.encode_prompt(&a.prompt, a.chat)?;
    let mut out = std::io::stdout().lock();
    let mut on_text = |piece: &str| {
        if !a.json {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    };
    let g = if engine.model.as_seq2seq().is_some() {
        // Encoder-decoders run their own loop (encoder and cross K/V once per request); the
        // serving step loop schedules decoder-only models.
        engine.generate(&prompt, &params, &mut on_text)?
    } else {
        // Through the serving engine (scheduler, paged KV cache, step loop), one request.
        let config = EngineConfig {
            max_num_seqs: 1,
            ..EngineConfig::default()
        };
        let handle = EngineHandle::start(Arc::new(engine), config)?;
        let g = handle.generate(&prompt, &params, &mut on_text)?;
        handle.shutdown();
        g
    };
    let moe = match &moe_model {
        Some((model, arch)) => Some(crate::moe_stats::report(model, arch)?),
        None => None,
    };
    if a.json {
        let mut v = json!({
            "text": g.text,
            "token_ids": g.token_ids,
            "prompt_tokens": g.prompt_tokens,
            "finish_reason": g.finish_reason.as_str(),
            "timings": {
                "prompt_ms": g.timings.prompt_ms,
                "decode_ms": g.timings.decode_ms,
                "prompt_tokens_per_s": g.timings.prompt_tokens_per_s,
                "decode_tokens_per_s": g.timings.decode_tokens_per_s,
            },
        });
        if let Some(m) = &moe {
            v["moe_stats"] = crate::moe_stats::to_json(m);
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        if let Some(m) = &moe {
            crate::moe_stats::print(m);
        }
    }
    Ok(())
}

/// Beam search: sampling options must be left at their neutral values (they are not applied).
fn run_beams(a: Args) -> Result<()> {
    let unsupported = [
        (
            "--temperature (beam sampling)",
            a.temperature.is_some_and(|t| t != 0.0),
        ),
        ("--repetition-penalty", a.repetition_penalty != 1.0),
        ("--frequency-penalty", a.frequency_penalty != 0.0),
        ("--presence-penalty", a.presence_penalty != 0.0),
        ("--stop", !a.stop.is_empty()),
    ];
    if let Some((flag, _)) = unsupported.iter().find(|(_, bad)| *bad) {
        anyhow::bail!("{flag} is not supported with --num-beams > 1");
    }
    let b = &a.beams;
    let params = BeamParams {
        num_beams: b.num_beams as usize,
        max_new_tokens: a.max_tokens as usize,
        length_penalty: b.length_penalty,
        early_stopping: b.early_stopping,
        no_repeat_ngram_size: b.no_repeat_ngram_size,
        num_return_sequences: b.num_return_sequences as usize,
        min_new_tokens: 0,
        eos: Vec::new(), // the model's
    };
    params.validate()?;
    let (engine, _, _) = model_arg::load(&a.common)?;
    if a.moe_stats {
        crate::moe_stats::report(&engine.model, &engine.info.architecture)?;
    }
    let prompt = engine.encode_prompt(&a.prompt, a.chat)?;
    let g = if engine.model.as_seq2seq().is_some() {
        engine.generate_seq2seq_beams(&prompt, &params)?
    } else {
        engine.generate_beams(&prompt, &params)?
    };
    let mut out = std::io::stdout().lock();
    let best = g
        .sequences
        .first()
        .ok_or_else(|| anyhow::anyhow!("beam search returned no hypothesis"))?;
    if a.json {
        let sequences: Vec<_> = g
            .sequences
            .iter()
            .map(|s| {
                json!({
                    "text": s.text,
                    "token_ids": s.token_ids,
                    "score": s.score,
                    "finish_reason": s.finish_reason.as_str(),
                })
            })
            .collect();
        let v = json!({
            "text": best.text,
            "token_ids": best.token_ids,
            "prompt_tokens": g.prompt_tokens,
            "finish_reason": best.finish_reason.as_str(),
            "timings": {
                "prompt_ms": g.timings.prompt_ms,
                "decode_ms": g.timings.decode_ms,
                "prompt_tokens_per_s": g.timings.prompt_tokens_per_s,
                "decode_tokens_per_s": g.timings.decode_tokens_per_s,
            },
            "sequences": sequences,
        });
        let mut v = v;
        if a.moe_stats {
            let m = crate::moe_stats::report(&engine.model, &engine.info.architecture)?;
            v["moe_stats"] = crate::moe_stats::to_json(&m);
        }
        writeln!(out, "{v}")?;
    } else if g.sequences.len() == 1 {
        writeln!(out, "{}", best.text)?;
    } else {
        for (i, s) in g.sequences.iter().enumerate() {
            writeln!(
                out,
                "--- sequence {} (score {:.4}) ---\n{}",
                i + 1,
                s.score,
                s.text
            )?;
        }
    }
    if a.moe_stats && !a.json {
        crate::moe_stats::print(&crate::moe_stats::report(
            &engine.model,
            &engine.info.architecture,
        )?);
    }
    Ok(())
}
