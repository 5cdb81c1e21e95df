//! `kiln bench serve`: load-test a running OpenAI-compatible server the way vLLM's
//! `benchmarks/benchmark_serving.py` (`vllm bench serve`) does — streaming `/v1/completions`
//! requests of random prompts sent at a Poisson request rate or with a fixed concurrency,
//! reporting request and token throughput and TTFT, TPOT, ITL and end-to-end latency at
//! mean/p50/p90/p99.
//!
//! Prompts are random token ids drawn from the server's own tokenization of a fixed text (via
//! `/tokenize`), sent as `prompt: [ids]`, so the input length is exact for any model and the
//! client needs no tokenizer. As in vLLM's random dataset, `ignore_eos` makes every request
//! generate its full output length. Definitions (vLLM's): TTFT = first non-empty text chunk;
//! ITL = gaps between later chunks; TPOT = (E2E - TTFT) / (output tokens - 1).
//!
//! The client is reqwest (no TLS features): a well-kept HTTP client whose hyper stack axum
//! already brings in, so it adds little to the build.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Text whose tokens seed the random prompts.
const SEED_TEXT: &str = "The quick brown fox jumps over the lazy dog. Serving many requests at \
    once means batching their tokens: each step runs the prompts being prefilled and one token \
    of every sequence being decoded, and a paged cache keeps their keys and values in blocks. \
    Latency and throughput pull against each other; a benchmark measures both at once.";

#[derive(clap::Args)]
pub struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model name to send (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Requests to send.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    num_prompts: u32,
    /// Requests per second, Poisson arrivals (default: all at once).
    #[arg(long, conflicts_with = "max_concurrency")]
    request_rate: Option<f64>,
    /// Most requests in flight at once (default: no limit).
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    input_len: u32,
    /// Output length in tokens.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    output_len: u32,
    /// Lengths vary uniformly in [len * (1 - r), len * (1 + r)] (vLLM's --random-range-ratio).
    #[arg(long, default_value_t = 0.0)]
    range_ratio: f64,
    /// Seed for prompts and arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    ok: bool,
    error: Option<String>,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft: f64,
    itl: Vec<f64>,
    e2e: f64,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(r) = a.request_rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--request-rate must be a positive number");
        }
    }
    if !(0.0..1.0).contains(&a.range_ratio) {
        bail!("--range-ratio must be in [0, 1)");
    }
    if a.max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(bench(a))
}

fn post_json(client: &reqwest::Client, url: String, body: &Value) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
}

async fn bench(a: Args) -> Result<()> {
    let base = a.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .context("building the HTTP client")?;
    let models: Value = serde_json::from_str(
        &client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .with_context(|| format!("connecting to {base}"))?
            .text()
            .await?,
    )
    .context("parsing /v1/models")?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => models["data"][0]["id"]
            .as_str()
            .context("/v1/models lists no model")?
            .to_string(),
    };
    let tok: Value = serde_json::from_str(
        &post_json(
            &client,
            format!("{base}/tokenize"),
            &json!({"prompt": SEED_TEXT, "add_special_tokens": false}),
        )
        .send()
        .await?
        .text()
        .await?,
    )
    .context("parsing /tokenize")?;
    let pool: Vec<u64> = tok["tokens"]
        .as_array()
        .context("/tokenize returned no tokens")?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    if pool.is_empty() {
        bail!("/tokenize returned no tokens");
    }
    let mut rng = StdRng::seed_from_u64(a.seed);
    let vary = |rng: &mut StdRng, len: u32| -> usize {
        let (lo, hi) = (
            ((len as f64) * (1.0 - a.range_ratio)).floor().max(1.0) as usize,
            ((len as f64) * (1.0 + a.range_ratio)).ceil() as usize,
        );
        rng.gen_range(lo..=hi.max(lo))
    };
    let requests: Vec<(Vec<u64>, usize)> = (0..a.num_prompts)
        .map(|_| {
            let n_in = vary(&mut rng, a.input_len);
            let n_out = vary(&mut rng, a.output_len);
            let ids = (0..n_in)
                .map(|_| pool[rng.gen_range(0..pool.len())])
                .collect();
            (ids, n_out)
        })
        .collect();

    let limit = Arc::new(Semaphore::new(
        a.max_concurrency
            .map_or(Semaphore::MAX_PERMITS, |c| c as usize),
    ));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for (ids, n_out) in requests {
        if let Some(r) = a.request_rate {
            // Exponential gaps: a Poisson process of rate r.
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            tokio::time::sleep(Duration::from_secs_f64(-u.ln() / r)).await;
        }
        let permit = limit.clone().acquire_owned().await?;
        let body = json!({
            "model": model, "prompt": ids, "max_tokens": n_out, "temperature": 0.0,
            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
        });
        let (client, url) = (client.clone(), format!("{base}/v1/completions"));
        tasks.push(tokio::spawn(async move {
            let out = one(&client, url, &body).await;
            drop(permit);
            out
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_else(|e| Outcome {
            error: Some(e.to_string()),
            ..Outcome::default()
        }));
    }
    let duration = start.elapsed().as_secs_f64();
    report(&a, &model, &outcomes, duration)
}

/// Sends one streaming request and times its chunks.
async fn one(client: &reqwest::Client, url: String, body: &Value) -> Outcome {
    let mut out = Outcome::default();
    let t0 = Instant::now();
    let resp = match post_json(client, url, body).send().await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if !resp.status().is_success() {
        out.error = Some(format!(
            "HTTP {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
        return out;
    }
    let mut resp = resp;
    let mut buf = String::new();
    let mut last: Option<Instant> = None;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                out.ok = out.error.is_none();
                out.e2e = t0.elapsed().as_secs_f64();
                return out;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                out.error = Some(e.to_string());
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                out.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            let has_text = v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match last {
                    None => out.ttft = (now - t0).as_secs_f64(),
                    Some(prev) => out.itl.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
            }
        }
    }
    out.error
        .get_or_insert_with(|| "stream ended without [DONE]".into());
    out
}

/// The q-th percentile (0..=100) by linear interpolation, as numpy's default.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    let ms = |x: f64| (x * 1e6).round() / 1e3;
    json!({
        "mean_ms": ms(mean), "p50_ms": ms(percentile(&v, 50.0)),
        "p90_ms": ms(percentile(&v, 90.0)), "p99_ms": ms(percentile(&v, 99.0)),
    })
}

fn report(a: &Args, model: &str, outcomes: &[Outcome], duration: f64) -> Result<()> {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let failed = outcomes.len() - ok.len();
    let input: usize = ok.iter().map(|o| o.prompt_tokens).sum();
    let output: usize = ok.iter().map(|o| o.output_tokens).sum();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|o| o.output_tokens > 1)
        .map(|o| (o.e2e - o.ttft) / (o.output_tokens - 1) as f64)
        .collect();
    let v = json!({
        "model": model,
        "num_prompts": outcomes.len(),
        "successful_requests": ok.len(),
        "failed_requests": failed,
        "request_rate": a.request_rate,
        "max_concurrency": a.max_concurrency,
        "duration_s": duration,
        "total_input_tokens": input,
        "total_output_tokens": output,
        "request_throughput": ok.len() as f64 / duration,
        "output_throughput": output as f64 / duration,
        "total_token_throughput": (input + output) as f64 / duration,
        "ttft": summary(ok.iter().map(|o| o.ttft).collect()),
        "tpot": summary(tpot),
        "itl": summary(ok.iter().flat_map(|o| o.itl.iter().copied()).collect()),
        "e2el": summary(ok.iter().map(|o| o.e2e).collect()),
        "first_error": outcomes.iter().find_map(|o| o.error.clone()),
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    println!("============ Serving Benchmark Result ============");
    println!("{:<40}{:>10}", "Successful requests:", ok.len());
    println!("{:<40}{:>10}", "Failed requests:", failed);
    println!("{:<40}{:>10.2}", "Benchmark duration (s):", duration);
    println!("{:<40}{:>10}", "Total input tokens:", input);
    println!("{:<40}{:>10}", "Total generated tokens:", output);
    println!(
        "{:<40}{:>10.2}",
        "Request throughput (req/s):",
        f("request_throughput")
    );
    println!(
        "{:<40}{:>10.2}",
        "Output token throughput (tok/s):",
        f("output_throughput")
    );
    println!(
        "{:<40}{:>10.2}",
        "Total token throughput (tok/s):",
        f("total_token_throughput")
    );
    for (key, title) in [
        ("ttft", "Time to First Token"),
        ("tpot", "Time per Output Token (excl. 1st token)"),
        ("itl", "Inter-token Latency"),
        ("e2el", "End-to-end Latency"),
    ] {
        println!("{:-^50}", title);
        for (stat, label) in [
            ("mean_ms", "Mean"),
            ("p50_ms", "P50"),
            ("p90_ms", "P90"),
            ("p99_ms", "P99"),
        ] {
            let val = v[key][stat].as_f64().unwrap_or(0.0);
            println!(
                "{:<40}{:>10.2}",
                format!("{label} {} (ms):", key.to_uppercase()),
                val
            );
        }
    }
    println!("==================================================");
    if let Some(e) = v["first_error"].as_str() {
        eprintln!("first error: {e}");
    }
    Ok(())
}
