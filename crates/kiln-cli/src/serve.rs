//! `kiln serve`: the OpenAI-compatible HTTP server (kiln-server) over a generator model
//! (completions, chat) or an encoder model (embeddings), until SIGINT/SIGTERM.
//!
//! Shutdown: on the signal new requests get 503, running ones finish, then the process exits 0.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_engine::{Encoder, Engine};
use kiln_server::engine::{EngineConfig, EngineHandle, KvCacheDtype};
use kiln_server::{AppState, ServedModel, ServerConfig};
use kiln_tokenizer::ChatTemplate;

use crate::{model_arg, Common};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients send (default: the model file or directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_num_seqs: u32,
    /// Most tokens in one engine step (prefill chunks plus decodes).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_num_batched_tokens: u32,
    /// Positions per KV-cache block (the last block of a sequence is partly empty: smaller
    /// blocks waste less memory, larger ones mean fewer, longer runs for attention to read).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    block_size: u32,
    /// Memory for the KV cache in MiB (default: sized from the model and the free memory).
    #[arg(long)]
    kv_cache_memory: Option<u64>,
    /// KV cache element type (auto: f32; int8 keeps a scale per position and head).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "int8"])]
    kv_cache_dtype: String,
    /// Requests allowed to wait for a slot; past it new requests get 429 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_waiting: u32,
    /// Do not reuse the KV cache of prompt prefixes shared between requests.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Tokens a chat completion may generate when the request gives neither `max_tokens` nor
    /// `max_completion_tokens` (never past the context). Completions keep OpenAI's 16.
    #[arg(long, default_value_t = kiln_server::DEFAULT_CHAT_MAX_TOKENS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    default_max_tokens: u32,
}

/// A checkpoint directory holding an encoder (sentence-transformers' modules.json, or a BERT-
/// family config.json) rather than a decoder.
fn is_encoder(path: &Path) -> bool {
    if !path.is_dir() {
        return false;
    }
    if path.join("modules.json").exists() {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(path.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    matches!(
        v.get("model_type").and_then(|t| t.as_str()),
        Some("bert" | "roberta" | "xlm-roberta" | "distilbert" | "mpnet")
    )
}

pub fn run(a: Args) -> Result<()> {
    let path = model_arg::resolve(a.common.model.as_deref())?;
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kiln".into())
    });
    let model = if is_encoder(&path) {
        model_arg::set_threads(a.common.threads)?;
        let enc = Encoder::load_on(&path, a.common.placement()?, &mut |_, _| {})
            .with_context(|| format!("loading {}", path.display()))?;
        ServedModel::Encoder(Arc::new(enc))
    } else {
        let common = Common {
            model: Some(path.display().to_string()),
            ..a.common.clone()
        };
        let (engine, _, _) = model_arg::load(&common)?;
        let chat = ChatTemplate::from_tokenizer(&engine.tokenizer)
            .ok()
            .map(Box::new);
        let engine: Arc<Engine> = Arc::new(engine);
        let config = EngineConfig {
            kv_cache_memory: a.kv_cache_memory.map(|mib| (mib as usize) << 20),
            kv_cache_dtype: match a.kv_cache_dtype.as_str() {
                "f16" => KvCacheDtype::F16,
                "int8" => KvCacheDtype::Int8,
                _ => KvCacheDtype::F32,
            },
            block_size: a.block_size as usize,
            max_num_batched_tokens: a.max_num_batched_tokens as usize,
            max_num_seqs: a.max_num_seqs as usize,
            max_waiting: a.max_waiting as usize,
            enable_prefix_caching: !a.no_prefix_caching,
        };
        let handle =
            EngineHandle::start(engine.clone(), config).context("starting the engine thread")?;
        ServedModel::Generator {
            engine,
            handle,
            chat,
        }
    };
    let mut config = ServerConfig::new(name.clone());
    config.max_body_bytes = a.max_body_bytes;
    config.default_max_tokens = a.default_max_tokens as usize;
    let state = AppState::new(config, model);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        // One line on stdout that scripts (and the test suite) wait for.
        println!("kiln: serving {name} on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        kiln_server::serve(listener, state, kiln_server::shutdown_signal())
            .await
            .context("serving")?;
        eprintln!("kiln: shut down cleanly");
        Ok(())
    })
}
