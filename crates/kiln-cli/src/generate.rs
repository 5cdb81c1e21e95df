//! `kiln generate`: stream a completion for a prompt, or print one JSON object with `--json`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use kiln_engine::{EngineConfig, EngineHandle, SamplingParams};
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
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
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
    /// instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let params = SamplingParams {
        temperature: a.temperature,
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
    let prompt = engine.encode_prompt(&a.prompt, a.chat)?;
    // Through the serving engine (scheduler, paged KV cache, step loop), one request.
    let config = EngineConfig {
        max_num_seqs: 1,
        ..EngineConfig::default()
    };
    let handle = EngineHandle::start(Arc::new(engine), config)?;
    let mut out = std::io::stdout().lock();
    let g = handle.generate(&prompt, &params, &mut |piece| {
        if !a.json {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    })?;
    handle.shutdown();
    if a.json {
        let v = json!({
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
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
    }
    Ok(())
}
