//! Sizing the paged KV cache: how many blocks a memory budget buys for a model.
//!
//! Default budget (`EngineConfig::kv_cache_memory = None`): what `max_num_seqs` sequences of the
//! model's full context would take, capped at [`DEFAULT_KV_BYTES`] (1 GiB) — a CPU box has no
//! dedicated memory to fill the way vLLM fills 90% of a GPU, and most requests use a small part
//! of the context, so the cap costs preemptions only under heavy long-context load. Any budget
//! must hold at least one full context (as vLLM requires `max_model_len` to fit), so every
//! request the engine accepts can run alone.

use kiln_models::Model;
use kiln_nn::{KvCacheDtype, PagedKvPool};

use super::EngineConfig;
use crate::{Engine, Error, Result};

/// The default cap on the KV cache's memory.
pub const DEFAULT_KV_BYTES: usize = 1 << 30;

/// `(n_layers, n_kv_heads, head_dim)` of a decoder.
pub(crate) fn kv_layout(engine: &Engine) -> Result<(usize, usize, usize)> {
    match &engine.model {
        Model::Llama(m) => Ok((m.cfg.n_layers, m.cfg.n_kv_heads, m.cfg.head_dim)),
        // Multi-head attention: one kv head per query head.
        Model::Gpt2(m) => Ok((m.cfg.n_layers, m.cfg.n_heads, m.cfg.head_dim())),
        Model::Bloom(m) => Ok((m.cfg.n_layers, m.cfg.n_heads, m.cfg.head_dim())),
        Model::Bert(_) => Err(Error::InvalidArgument(format!(
            "{} is an encoder-only model: it cannot generate",
            engine.info.architecture
        ))),
        // The step loop schedules decoder-only models; encoder-decoders generate through
        // `Engine::generate` (encoder and cross K/V once per request).
        Model::Seq2Seq(_) => Err(Error::InvalidArgument(format!(
            "{} is an encoder-decoder model: the serving engine runs decoder-only models",
            engine.info.architecture
        ))),
    }
}

/// Blocks of `cfg.block_size` positions the budget buys; errors if they cannot hold one full
/// context.
pub(super) fn n_blocks(engine: &Engine, cfg: &EngineConfig) -> Result<usize> {
    let (n_layers, n_kv_heads, head_dim) = kv_layout(engine)?;
    let per_block = PagedKvPool::bytes_per_block(
        n_layers,
        n_kv_heads,
        head_dim,
        cfg.block_size,
        cfg.kv_cache_dtype,
    );
    let context_blocks = engine.info.max_context.div_ceil(cfg.block_size);
    let bytes = cfg.kv_cache_memory.unwrap_or_else(|| {
        let all = context_blocks
            .saturating_mul(cfg.max_num_seqs)
            .saturating_mul(per_block);
        all.min(DEFAULT_KV_BYTES.max(context_blocks * per_block))
    });
    let n = kiln_kv::blocks_for_budget(bytes, per_block);
    if n < context_blocks {
        return Err(Error::InvalidArgument(format!(
            "kv_cache_memory {bytes} bytes buys {n} blocks of {} positions ({per_block} bytes \
             each, {:?}); one full context of {} tokens needs {context_blocks}",
            cfg.block_size, cfg.kv_cache_dtype, engine.info.max_context
        )));
    }
    Ok(n)
}

/// The paged storage for `n_blocks` blocks.
pub(crate) fn pool(engine: &Engine, cfg: &EngineConfig, n_blocks: usize) -> Result<PagedKvPool> {
    let (n_layers, n_kv_heads, head_dim) = kv_layout(engine)?;
    let placement = engine.info.placement;
    if placement.is_host_f32() {
        return Ok(PagedKvPool::new(
            n_layers,
            n_kv_heads,
            head_dim,
            n_blocks,
            cfg.block_size,
            cfg.kv_cache_dtype,
        ));
    }
    if cfg.kv_cache_dtype != KvCacheDtype::F32 {
        return Err(Error::InvalidArgument(format!(
            "kv cache dtype {:?} is for the CPU; on {} the cache holds the model's {}",
            cfg.kv_cache_dtype, placement.device, placement.dtype
        )));
    }
    Ok(PagedKvPool::on_device(
        placement.device,
        placement.dtype,
        n_layers,
        n_kv_heads,
        head_dim,
        n_blocks,
        cfg.block_size,
    )
    .map_err(kiln_models::Error::from)?)
}

/// Bytes of KV per token for a dtype (for reports).
pub fn kv_bytes_per_token(engine: &Engine, dtype: KvCacheDtype) -> Result<usize> {
    let (n_layers, n_kv_heads, head_dim) = kv_layout(engine)?;
    Ok(PagedKvPool::bytes_per_block(
        n_layers, n_kv_heads, head_dim, 1, dtype,
    ))
}
