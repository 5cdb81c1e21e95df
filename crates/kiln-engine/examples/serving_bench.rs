//! Serving throughput: total generated tokens/s with N concurrent requests through
//! `EngineHandle`, against one request's decode speed measured in the same run.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --profile test -p kiln-engine --example serving_bench -- \
//!     [model.gguf] [--concurrency 64] [--max-tokens 64] [--repeats 3]
//! ```
//! Each repeat runs, back to back: one request alone (its decode tokens/s: generated tokens
//! after the first over the time after the first token), then N requests submitted at once
//! (total generated tokens over the wall time from the first submit to the last finish).
//! Prompts are N different short chat prompts; `ignore_eos` makes every request generate
//! exactly `--max-tokens`. Reports min and median of the repeats and the CPU share
//! ((user+sys) / (wall × threads), from /proc/self/stat): below ~0.9 the run did not get its
//! cores. Also prints the KV waste (allocated slots holding no token) sampled every 20 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_engine::{Engine, EngineConfig, EngineHandle, Event, GenerateRequest, SamplingParams};

fn cpu_seconds() -> f64 {
    // Fields 14 and 15 (utime, stime) in clock ticks; the command name (field 2) may hold spaces
    // but ends at the last ')'.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After ')': state is index 0, so utime (field 14) is index 11.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

struct Run {
    tokens_per_s: f64,
    cpu_share: f64,
    generated: usize,
    /// Generated tokens per CPU-second (user + sys of the whole process): a machine-load
    /// independent view of efficiency when the cores are shared.
    tokens_per_cpu_s: f64,
}

/// Submits every prompt at once and waits for all; returns total generated tokens/s.
fn run(h: &EngineHandle, prompts: &[Vec<u32>], max_tokens: usize, threads: usize) -> Run {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            h.submit(GenerateRequest::new(p.clone(), params.clone()))
                .expect("submit")
        })
        .collect();
    let mut generated = 0;
    let mut first_token_at = None;
    for mut s in streams {
        while let Some(ev) = s.recv() {
            match ev {
                Event::Token { .. } => {
                    generated += 1;
                    first_token_at.get_or_insert_with(Instant::now);
                }
                Event::Finished { .. } => break,
                Event::Failed(e) => panic!("{e}"),
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c0;
    // One request: decode speed after its first token (what `kiln bench` calls tg).
    let tokens_per_s = if prompts.len() == 1 {
        let since_first = first_token_at.map_or(wall, |t| t.elapsed().as_secs_f64());
        (generated - 1) as f64 / since_first
    } else {
        generated as f64 / wall
    };
    Run {
        tokens_per_s,
        cpu_share: cpu / (wall * threads as f64),
        generated,
        tokens_per_cpu_s: generated as f64 / cpu.max(0.01),
    }
}

fn summary(name: &str, runs: &mut [f64]) -> f64 {
    runs.sort_by(|a, b| a.total_cmp(b));
    let median = runs[runs.len() / 2];
    println!(
        "{name}: min {:.1}  median {:.1}  max {:.1}  (runs {:?})",
        runs[0],
        median,
        runs[runs.len() - 1],
        runs.iter()
            .map(|x| (x * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    median
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let n = arg(&args, "--concurrency", 64);
    let max_tokens = arg(&args, "--max-tokens", 64);
    let repeats = arg(&args, "--repeats", 3);
    let threads = rayon::current_num_threads();
    let e = Arc::new(Engine::load(model.as_ref(), &mut |_, _| {}).expect("model loads"));
    let topics = [
        "the sea", "a cat", "Rust", "winter", "bread", "the moon", "music", "a river",
    ];
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let q = format!("Tell me about {} (story #{i}).", topics[i % topics.len()]);
            e.encode_prompt(&q, true).expect("prompt")
        })
        .collect();
    let cfg = EngineConfig {
        max_num_seqs: n.max(1),
        max_num_batched_tokens: 512.max(n),
        ..EngineConfig::default()
    };
    let h = EngineHandle::start(e.clone(), cfg).expect("engine starts");
    // Sample KV waste while the batch runs.
    let stop = Arc::new(AtomicBool::new(false));
    let waste = Arc::new(Mutex::new(Vec::<(usize, usize)>::new()));
    let sampler = {
        let (h, stop, waste) = (h.clone(), stop.clone(), waste.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let s = h.stats();
                if s.kv_slots_allocated > 0 {
                    waste
                        .lock()
                        .unwrap()
                        .push((s.kv_slots_allocated, s.kv_slots_used));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    println!("model {model}, {threads} threads, {n} concurrent, {max_tokens} tokens each");
    run(&h, &prompts[..1], 8, threads); // warm-up
    let (mut single, mut batch) = (Vec::new(), Vec::new());
    for rep in 0..repeats {
        let one = run(&h, &prompts[..1], max_tokens, threads);
        let many = run(&h, &prompts, max_tokens, threads);
        println!(
            "repeat {rep}: single {:.1} tok/s (cpu share {:.2}, {:.1} tok/cpu-s); {n} concurrent \
             {:.1} tok/s total ({} tokens, cpu share {:.2}, {:.1} tok/cpu-s)",
            one.tokens_per_s,
            one.cpu_share,
            one.tokens_per_cpu_s,
            many.tokens_per_s,
            many.generated,
            many.cpu_share,
            many.tokens_per_cpu_s
        );
        single.push(one.tokens_per_s);
        batch.push(many.tokens_per_s);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let s1 = summary("single-request decode tok/s", &mut single);
    let sn = summary(&format!("{n}-concurrent total tok/s"), &mut batch);
    println!("speed-up (medians): {:.2}x", sn / s1);
    let w = waste.lock().unwrap();
    let (alloc, used): (usize, usize) = w.iter().fold((0, 0), |(a, u), &(x, y)| (a + x, u + y));
    let worst = w
        .iter()
        .map(|&(a, u)| 1.0 - u as f64 / a as f64)
        .fold(0.0, f64::max);
    println!(
        "KV waste: {:.2}% of allocated slots on average over {} samples (worst sample {:.2}%)",
        100.0 * (1.0 - used as f64 / alloc.max(1) as f64),
        w.len(),
        100.0 * worst
    );
    println!("stats: {:?}", h.stats());
    h.shutdown();
}
