//! The loop every layer stack here shares (LLaMA, GPT-2, BLOOM, the T5 and BART encoders and
//! decoders): each block in turn over the packed step, the trace of the fixture tests (each
//! block's input, then the last block's output), then `advance` of the KV store. The models
//! differ only in what comes before (embeddings) and after (final norm) and in a block's
//! arguments, which the caller's closure supplies. A calibration session (kiln-nn `calibrate.rs`)
//! quantizes each block here, its last run giving the next one's input.

use kiln_nn::{Batch, KvStore};
use kiln_tensor::Tensor;

use crate::Result;

/// Runs `block(i, x)` for `i in 0..n_blocks`, each on the previous one's output, recording the
/// trace (an encoder stack: nothing to advance).
pub(crate) fn layers(
    mut x: Tensor,
    n_blocks: usize,
    mut trace: Option<&mut Vec<Tensor>>,
    mut block: impl FnMut(usize, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    for i in 0..n_blocks {
        if let Some(t) = trace.as_deref_mut() {
            t.push(x.clone());
        }
        x = if kiln_nn::calibrate::active() {
            // Quantize this block on its input, then take its output (kiln-nn `calibrate.rs`).
            kiln_nn::calibrate::quantize_block(i, || block(i, &x))?
        } else {
            block(i, &x)?
        };
    }
    if let Some(t) = trace {
        t.push(x.clone());
    }
    Ok(x)
}

/// Runs `block(i, x, kv)` for `i in 0..n_blocks` as [`layers`] does, then advances `kv`.
pub(crate) fn run(
    x: Tensor,
    n_blocks: usize,
    batch: &Batch,
    kv: &mut dyn KvStore,
    trace: Option<&mut Vec<Tensor>>,
    mut block: impl FnMut(usize, &Tensor, &mut dyn KvStore) -> Result<Tensor>,
) -> Result<Tensor> {
    let x = layers(x, n_blocks, trace, |i, x| block(i, x, &mut *kv))?;
    kv.advance(batch);
    Ok(x)
}
