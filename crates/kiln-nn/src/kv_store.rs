//! [`KvStore`]: where attention writes a step's keys/values and reads each sequence's context.
//!
//! Model code is written once against this trait; what stores the rows is the caller's choice:
//! a contiguous per-sequence [`KvCache`] (single requests, tests, beam search), or the serving
//! engine's paged block pool ([`crate::PagedKv`], on the host or a device). The attention layer
//! hands over a whole step's new rows and queries as tensors; the store appends the rows and
//! runs attention over everything it holds for each sequence, so a paged store can read through
//! its block tables without a copy.

use kiln_tensor::cpu::attention::{attention, AttnParams};
use kiln_tensor::Tensor;

use crate::{Batch, KvCache, Result};

pub trait KvStore {
    /// Appends `k`, `v` — `(n_tokens, n_kv_heads · head_dim)`, the step's rows of every
    /// sequence of `batch` — to layer `layer`, then returns the attention of `q` `(n_tokens,
    /// n_heads · head_dim)` over every cached row of each row's sequence, the new ones included.
    /// Each sequence's result is the same as alone (a store may run them in parallel).
    fn append_attend_all(
        &mut self,
        layer: usize,
        batch: &Batch,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttnParams,
    ) -> Result<Tensor>;

    /// Called once after the last layer of a step: every sequence now holds its new rows.
    fn advance(&mut self, batch: &Batch);
}

/// Runs `one(seq, q, k, v, out)` for each sequence of `batch` over its rows of host f32 `q`,
/// `k`, `v`, into a fresh `(n_tokens, n_heads · head_dim)` output: the shape of every host
/// store's [`KvStore::append_attend_all`].
pub(crate) fn per_sequence(
    batch: &Batch,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    params: &AttnParams,
    mut one: impl FnMut(usize, &[f32], &[f32], &[f32], &mut [f32]),
) -> Result<Tensor> {
    let (q_row, kv_row) = (
        params.n_heads * params.head_dim,
        params.n_kv_heads * params.head_dim,
    );
    let (q, k, v) = (q.as_f32_slice()?, k.as_f32_slice()?, v.as_f32_slice()?);
    let mut out = vec![0.0f32; batch.n_tokens() * q_row];
    for (i, span) in batch.seqs.iter().enumerate() {
        let (qr, kvr) = (span.elems(q_row), span.elems(kv_row));
        one(i, &q[qr.clone()], &k[kvr.clone()], &v[kvr], &mut out[qr]);
    }
    Ok(Tensor::from_vec(out, [batch.n_tokens(), q_row])?)
}

fn append_attend_contiguous(
    cache: &mut KvCache,
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    params: &AttnParams,
    out: &mut [f32],
) {
    let kv_row = params.n_kv_heads * params.head_dim;
    let kv = cache.layer_mut(layer);
    let q_start = kv.k.len() / kv_row;
    kv.k.extend_from_slice(k);
    kv.v.extend_from_slice(v);
    attention(q, &kv.k, &kv.v, q_start, params, out);
}

/// One sequence's contiguous cache; the batch must hold exactly that sequence.
impl KvStore for KvCache {
    fn append_attend_all(
        &mut self,
        layer: usize,
        batch: &Batch,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttnParams,
    ) -> Result<Tensor> {
        assert_eq!(batch.seqs.len(), 1, "a single KvCache holds one sequence");
        per_sequence(batch, q, k, v, params, |_, q, k, v, out| {
            append_attend_contiguous(self, layer, q, k, v, params, out)
        })
    }

    fn advance(&mut self, batch: &Batch) {
        let n: usize = batch.seqs.iter().map(|s| s.len).sum();
        KvCache::advance(self, n);
    }
}

/// Several sequences, each with its own contiguous cache, in the order of `Batch::seqs`.
pub struct SeqCaches<'a>(pub Vec<&'a mut KvCache>);

impl KvStore for SeqCaches<'_> {
    fn append_attend_all(
        &mut self,
        layer: usize,
        batch: &Batch,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttnParams,
    ) -> Result<Tensor> {
        per_sequence(batch, q, k, v, params, |i, q, k, v, out| {
            append_attend_contiguous(self.0[i], layer, q, k, v, params, out)
        })
    }

    fn advance(&mut self, batch: &Batch) {
        assert_eq!(batch.seqs.len(), self.0.len(), "one cache per sequence");
        for (span, cache) in batch.seqs.iter().zip(self.0.iter_mut()) {
            cache.advance(span.len);
        }
    }
}
