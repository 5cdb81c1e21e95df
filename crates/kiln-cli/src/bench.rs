//! `kiln bench`: prefill tokens/s for a prompt of random tokens, then decode tokens/s for
//! tokens generated right after it, median of repeats after one warm-up — what llama-bench
//! reports as pp512 and tg128, except that decode here runs at context 512..640.

use std::time::Instant;

use anyhow::Result;
use kiln_engine::argmax;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use crate::{model_arg, Common};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    common: Common,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_tokens: u32,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    gen_tokens: u32,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Print a JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Load-test a running server (like `vllm bench serve`).
    Serve(crate::bench_serve::Args),
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn weights_bytes(path: &std::path::Path) -> u64 {
    if !path.is_dir() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub fn run(a: Args) -> Result<()> {
    if let Some(BenchCommand::Serve(s)) = a.command {
        return crate::bench_serve::run(s);
    }
    let (engine, path, threads) = model_arg::load(&a.common)?;
    let (np, ng) = (a.prompt_tokens as usize, a.gen_tokens as usize);
    if np + ng > engine.info.max_context {
        anyhow::bail!(
            "--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}",
            np + ng,
            engine.info.max_context
        );
    }
    let mut rng = StdRng::seed_from_u64(42);
    let vocab = engine.info.vocab_size as u32;
    let prompt: Vec<u32> = (0..np).map(|_| rng.gen_range(0..vocab)).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..=a.repeats {
        let mut cache = engine.model.new_cache();
        let t0 = Instant::now();
        let logits = engine.step(&mut cache, &prompt, 1)?;
        let prefill = t0.elapsed().as_secs_f64();
        let mut next = argmax(&logits.into_f32_vec());
        let t1 = Instant::now();
        for _ in 0..ng {
            next = argmax(&engine.step(&mut cache, &[next], 1)?.into_f32_vec());
        }
        let decode = t1.elapsed().as_secs_f64();
        if rep > 0 {
            pp.push(np as f64 / prefill);
            tg.push(ng as f64 / decode);
        }
    }
    let (pp_runs, tg_runs) = (pp.clone(), tg.clone());
    let placement = engine.info.placement;
    let backend = match placement.device {
        kiln_tensor::Device::Cpu => "CPU".to_string(),
        d => format!("CUDA ({d}, {})", placement.dtype),
    };
    let (pps, tgs) = (median(&mut pp), median(&mut tg));
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A GGUF file's size, or a directory's weight files (*.safetensors).
    let size_mib = weights_bytes(&path) as f64 / (1 << 20) as f64;
    if a.json {
        let v = json!({
            "model": name,
            "threads": threads,
            "device": placement.device.to_string(),
            "dtype": placement.dtype.to_string(),
            "prompt_tokens": np,
            "gen_tokens": ng,
            "repeats": a.repeats,
            "prefill_tokens_per_s": pps,
            "decode_tokens_per_s": tgs,
            "prefill_runs": pp_runs,
            "decode_runs": tg_runs,
        });
        println!("{v}");
    } else {
        println!("| model | size | backend | threads | test | t/s |");
        println!("| --- | ---: | --- | ---: | ---: | ---: |");
        println!("| {name} | {size_mib:.2} MiB | {backend} | {threads} | pp{np} | {pps:.2} |");
        println!("| {name} | {size_mib:.2} MiB | {backend} | {threads} | tg{ng} | {tgs:.2} |");
    }
    Ok(())
}
