//! `kiln`: run language models from the command line.
//!
//! Errors print as one line `kiln: error: ...` with exit code 1; invalid flags are reported by
//! clap with exit code 2 (the usual convention for usage errors).

mod bench;
mod bench_serve;
mod classify;
mod embed;
mod generate;
mod model_arg;
mod moe_stats;
mod quantize;
mod score;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Fast LLM inference on CPUs and GPUs",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// Model: a GGUF file, a Hugging Face model directory (config.json + safetensors +
    /// tokenizer.json) or a hub id (owner/name, downloaded once). Default: SmolLM2-135M-Instruct
    /// Q4_1, fetched on first use into the cache ($KILN_CACHE, else ~/.cache/kiln).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Where the model runs: cpu, cuda (GPU 0) or cuda:N. CUDA needs a build with
    /// `--features cuda` and an NVIDIA driver; every architecture runs there.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: kiln_tensor::Device,
    /// Compute and storage dtype of the weights: f32, bf16 or f16 (default: f32 on the CPU,
    /// bf16 on CUDA). GGUF matrices keep their block format on the CPU in f32 and on CUDA.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<kiln_tensor::DType>,
    /// Quantize the dense linear weights as they load: int8 (Q8_0, 8.5 bits a weight) or int4
    /// (Q4_1, 5 bits; the LM head int8), round to nearest per 32 input columns, run on the
    /// quantized kernels; token embeddings (and a tied head) int8. Matrices already quantized
    /// (GGUF, GPTQ, AWQ) and MoE routers stay as they are. For GPTQ/AWQ with calibration:
    /// `kiln quantize`.
    /// llm-int8: LLM.int8, int8 rows with the outlier feature columns of each step (an
    /// activation of at least --llm-int8-threshold) multiplied in 16-bit, on the host.
    #[arg(long, value_parser = ["int8", "int4", "llm-int8"])]
    pub quantize: Option<String>,
    /// LLM.int8's outlier threshold; 0 turns the decomposition off (plain absmax int8).
    #[arg(long, default_value_t = kiln_nn::load_quant::Threshold::DEFAULT)]
    pub llm_int8_threshold: f32,
}

fn parse_device(s: &str) -> Result<kiln_tensor::Device, String> {
    s.parse()
}

fn parse_dtype(s: &str) -> Result<kiln_tensor::DType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(kiln_tensor::DType::F32),
        "bf16" | "bfloat16" => Ok(kiln_tensor::DType::BF16),
        "f16" | "float16" | "half" => Ok(kiln_tensor::DType::F16),
        _ => Err(format!("unknown dtype `{s}` (expected f32, bf16 or f16)")),
    }
}

impl Common {
    /// The device and dtype the model loads into.
    pub fn placement(&self) -> anyhow::Result<kiln_nn::Placement> {
        let dtype = self.dtype.unwrap_or(match self.device {
            kiln_tensor::Device::Cpu => kiln_tensor::DType::F32,
            kiln_tensor::Device::Cuda(_) => kiln_tensor::DType::BF16,
        });
        if self.device == kiln_tensor::Device::Cpu && dtype != kiln_tensor::DType::F32 {
            anyhow::bail!(
                "--dtype {dtype} is for GPUs: the CPU engine computes in f32 (drop --dtype)"
            );
        }
        self.device.check()?;
        if self.quantize.is_some() && self.device != kiln_tensor::Device::Cpu {
            anyhow::bail!("--quantize runs on the CPU for now (drop --device)");
        }
        let quantize = match &self.quantize {
            Some(q) => Some(
                kiln_nn::LoadQuant::parse(q, self.llm_int8_threshold).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--llm-int8-threshold must be a finite number >= 0, not {}",
                        self.llm_int8_threshold
                    )
                })?,
            ),
            None => None,
        };
        Ok(kiln_nn::Placement {
            device: self.device,
            dtype,
            quantize,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it as it is produced.
    Generate(generate::Args),
    /// Teacher-forced log-probabilities and perplexity of a text (like llama-perplexity).
    Score(score::Args),
    /// Measure prefill and decode speed (like llama-bench).
    Bench(bench::Args),
    /// Sentence embeddings from an encoder model (BERT, RoBERTa, DistilBERT, MiniLM).
    Embed(embed::Args),
    /// Cosine similarity of two texts' embeddings.
    Similarity(embed::SimilarityArgs),
    /// Sequence or token classification (NER) with an encoder's task head.
    Classify(classify::Args),
    /// Quantize a model (RTN, GPTQ) and write it as a GPTQ/AWQ Hugging Face directory.
    Quantize(quantize::Args),
    /// OpenAI-compatible HTTP server (completions, chat, embeddings, metrics).
    Serve(serve::Args),
}

/// Keeps freed activation buffers in the heap for the next op (glibc): a forward pass is a
/// chain of tensor ops whose outputs are megabytes each, and glibc would otherwise hand each one
/// to `mmap` and back to the OS on free, so every op faults its output in zeroed again — 35%
/// of MiniLM's embedding throughput on this machine (BENCHMARKS.md). Large buffers stay
/// reusable; memory is returned when the process ends.
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_buffers();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Score(a) => score::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Similarity(a) => embed::similarity(a),
        Command::Classify(a) => classify::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Quantize(a) => quantize::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("kiln: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
