//! `kiln quantize`: quantize any model kiln loads (a GGUF file is dequantized first) with
//! round-to-nearest or GPTQ over calibration text through kiln's own forward pass, printing
//! each linear's relative output error as it goes, and write a Hugging Face directory in the
//! GPTQ (AutoGPTQ/GPTQModel) or AWQ (AutoAWQ GEMM) layout — or, with `--method none`, the
//! float model (the test bed: SmolLM2's GGUF dequantized).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_models::export::{self, DenseDtype, QuantFormat, QuantizedLinears};
use kiln_models::quantize::{self, Method, Options};
use kiln_quant::IntSpec;
use serde_json::json;

use crate::{model_arg, Common};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// No quantization: write the float model.
    None,
    /// Round to nearest.
    Rtn,
    /// GPTQ (Frantar et al. 2022) over the calibration text.
    Gptq,
    /// AWQ (Lin et al. 2023): activation-aware scales and clipping, then round to nearest.
    Awq,
    /// AWQ's scales, then GPTQ of the scaled weights (written as GPTQ unless --format awq).
    AwqGptq,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// GPTQ `checkpoint_format: "gptq"` (zero points stored minus one; v2 where one is 0).
    Gptq,
    /// GPTQ `checkpoint_format: "gptq_v2"`.
    GptqV2,
    /// AutoAWQ's GEMM layout (4-bit with zero points).
    Awq,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum, default_value = "gptq")]
    method: MethodArg,
    /// Bits per weight: 2, 3, 4 or 8.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=8))]
    bits: u8,
    /// Input columns per group; -1 for one group per output channel.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    group_size: i64,
    /// A grid symmetric around zero (no zero points).
    #[arg(long)]
    sym: bool,
    /// GPTQ: quantize columns by decreasing Hessian diagonal (static groups).
    #[arg(long)]
    act_order: bool,
    /// GPTQ: dampening as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp_percent: f64,
    /// GPTQ: quantize a whole block from one pass instead of each input group on the
    /// quantized outputs of the ones before it.
    #[arg(long)]
    no_true_sequential: bool,
    /// Calibration text (GPTQ; for RTN it only measures each layer's error).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// At most this many calibration sequences.
    #[arg(long)]
    calib_samples: Option<usize>,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(2..))]
    calib_seq_len: u32,
    /// Checkpoint layout of the quantized linears (default: gptq).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Dtype of the tensors left dense (default: f16 when quantizing, f32 for --method none).
    #[arg(long)]
    out_dtype: Option<String>,
    /// The Hugging Face directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON summary (per-layer errors, timings) on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    model_arg::set_threads(a.common.threads)?;
    if a.common.device != kiln_tensor::Device::Cpu {
        bail!("kiln quantize runs on the CPU (drop --device)");
    }
    if a.common.quantize.is_some() {
        bail!("kiln quantize takes --method, --bits and --group-size (drop --quantize)");
    }
    let path = model_arg::resolve(a.common.model.as_deref())?;
    let spec = IntSpec {
        bits: a.bits,
        group_size: match a.group_size {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => bail!("--group-size must be positive or -1 (per channel), not {g}"),
        },
        sym: a.sym,
    };
    let dtype = match &a.out_dtype {
        Some(s) => DenseDtype::parse(s)
            .with_context(|| format!("--out-dtype must be f32, f16 or bf16, not `{s}`"))?,
        None if a.method == MethodArg::None => DenseDtype::F32,
        None => DenseDtype::F16,
    };
    if a.out.join("config.json").exists() && a.out.canonicalize().ok() == path.canonicalize().ok() {
        bail!("--out must not be the source model's directory");
    }
    let t0 = Instant::now();
    let loaded = kiln_models::load(&path, &mut |_, _| {})
        .with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = kiln_engine::load_tokenizer(&path)?;
    let calib = match &a.calib {
        Some(f) => calibration(&tokenizer, f, a.calib_seq_len as usize, a.calib_samples)?,
        None => Vec::new(),
    };
    let mut summary = json!({ "model": path.display().to_string() });
    let quantized = if a.method == MethodArg::None {
        None
    } else {
        let method = match a.method {
            MethodArg::Rtn => Method::Rtn,
            MethodArg::Awq => Method::Awq,
            MethodArg::AwqGptq => Method::AwqGptq,
            _ => Method::Gptq,
        };
        if method != Method::Rtn && calib.is_empty() {
            bail!("--method gptq, awq and awq-gptq need calibration text: --calib FILE");
        }
        let opts = Options {
            method,
            spec,
            act_order: a.act_order,
            damp_percent: a.damp_percent,
            true_sequential: !a.no_true_sequential,
        };
        let pb = ProgressBar::new(0);
        pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("quantizing [{bar:30}] {pos}/{len} linears {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (pb2, quiet) = (pb.clone(), a.json);
        let q = quantize::quantize(
            &loaded,
            &calib,
            &opts,
            Box::new(move |r, done, total| {
                pb2.set_length(total as u64);
                pb2.set_position(done as u64);
                if !quiet {
                    let err = r
                        .rel_error
                        .map_or("    -   ".to_string(), |e| format!("{e:.6}"));
                    pb2.println(format!("{:<48} rel err {err}  {:.2} s", r.name, r.seconds));
                }
            }),
        )?;
        pb.finish_and_clear();
        summary["quantize_seconds"] = json!(t0.elapsed().as_secs_f64());
        summary["layers"] = q
            .reports
            .iter()
            .map(|r| json!({"name": r.name, "rel_error": r.rel_error, "seconds": r.seconds}))
            .collect();
        Some((q, opts))
    };
    let qlinears = quantized.as_ref().map(|(q, opts)| {
        let format = match a.format {
            Some(FormatArg::Awq) => QuantFormat::Awq,
            None if a.method == MethodArg::Awq => QuantFormat::Awq,
            Some(FormatArg::GptqV2) => QuantFormat::Gptq { v2: true },
            // v1 cannot store a zero point of 0 (it keeps zero - 1).
            _ if q.linears.values().any(|m| m.zeros.contains(&0)) && !spec.sym => {
                if a.format == Some(FormatArg::Gptq) {
                    eprintln!("kiln: a zero point is 0, which checkpoint_format gptq cannot hold: writing gptq_v2");
                }
                QuantFormat::Gptq { v2: true }
            }
            _ => QuantFormat::Gptq { v2: false },
        };
        QuantizedLinears {
            format,
            linears: &q.linears,
            dense_divisors: &q.dense_divisors,
            extra_config: json!({
                "desc_act": opts.act_order,
                "static_groups": opts.act_order,
                "damp_percent": opts.damp_percent,
                "true_sequential": opts.true_sequential,
                "quantizer": format!("kiln {}", env!("CARGO_PKG_VERSION")),
            }),
        }
    });
    let qlinears = qlinears.map(|mut q| {
        if q.format == QuantFormat::Awq {
            q.extra_config = json!({});
        }
        q
    });
    export::write_dir(&loaded, &a.out, dtype, qlinears.as_ref(), &mut |_, _| {})
        .with_context(|| format!("writing {}", a.out.display()))?;
    write_tokenizer(&path, &tokenizer, &loaded, &a.out)?;
    summary["out"] = json!(a.out.display().to_string());
    summary["seconds"] = json!(t0.elapsed().as_secs_f64());
    if a.json {
        println!("{summary}");
    } else {
        eprintln!(
            "wrote {} in {:.1} s",
            a.out.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The calibration file's tokens in sequences of `seq_len` (the last one may be shorter).
fn calibration(
    tok: &kiln_tokenizer::Tokenizer,
    file: &Path,
    seq_len: usize,
    max_samples: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ids = tok.encode(&text, false)?;
    let mut seqs: Vec<Vec<u32>> = ids
        .chunks(seq_len)
        .filter(|c| c.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect();
    if let Some(n) = max_samples {
        seqs.truncate(n);
    }
    if seqs.is_empty() {
        bail!(
            "{} has fewer than 2 tokens of calibration text",
            file.display()
        );
    }
    Ok(seqs)
}

/// The tokenizer files next to the weights: copied from a Hugging Face source, or written
/// from a GGUF file's tokenizer (tokenizer.json, and tokenizer_config.json with its special
/// tokens and chat template).
fn write_tokenizer(
    src: &Path,
    tok: &kiln_tokenizer::Tokenizer,
    loaded: &kiln_models::Loaded,
    out: &Path,
) -> Result<()> {
    if src.is_dir() {
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
            "chat_template.jinja",
            "vocab.txt",
            "vocab.json",
            "merges.txt",
        ] {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), out.join(f))
                    .with_context(|| format!("copying {f} to {}", out.display()))?;
            }
        }
        return Ok(());
    }
    let text = tok
        .inner()
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?;
    std::fs::write(out.join("tokenizer.json"), text)?;
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": loaded.info.max_context,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(b) = tok.bos_token() {
        cfg["bos_token"] = json!(b);
    }
    if let Some(e) = tok.eos_token() {
        cfg["eos_token"] = json!(e);
    }
    if let Some(t) = tok.chat_template() {
        cfg["chat_template"] = json!(t);
    }
    std::fs::write(
        out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    let mut gen = json!({});
    if let Some(b) = loaded.info.bos_token_id {
        gen["bos_token_id"] = json!(b);
    }
    if !loaded.info.eos_token_ids.is_empty() {
        gen["eos_token_id"] = json!(loaded.info.eos_token_ids);
    }
    std::fs::write(
        out.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)? + "\n",
    )?;
    Ok(())
}
