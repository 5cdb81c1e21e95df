//! [`KvStore`]: where attention writes a step's keys/values and reads each sequence's context.
//!
//! Model code is written once against this trait; what stores the rows is the caller's choice:
//! a contiguous per-sequence [`KvCache`] (single requests, tests, beam search), or the serving
//! engine's paged block pool. The attention layer hands over one sequence's new rows and queries
//! at a time; the store appends the rows and runs the attention kernel over everything it holds
//! for that sequence, so a paged store can read through its block table without a copy.

use kiln_tensor::cpu::attention::{attention, AttnParams};

use crate::{Batch, KvCache};

pub trait KvStore {
    /// Appends `k`, `v` — `(n_new, n_kv_heads, head_dim)` — to layer `layer` of sequence `seq`
    /// (an index into `Batch::seqs`), then writes into `out` the attention of `q`
    /// `(n_new, n_heads, head_dim)` over every cached row of that sequence, the new ones included.
    #[allow(clippy::too_many_arguments)]
    fn append_attend(
        &mut self,
        layer: usize,
        seq: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        params: &AttnParams,
        out: &mut [f32],
    );

    /// [`append_attend`](Self::append_attend) for every sequence of `batch`: `q`, `k`, `v` and
    /// `out` hold the whole step's rows. A store may run the sequences in parallel (the paged
    /// pool does); each sequence's result is the same as alone.
    #[allow(clippy::too_many_arguments)]
    fn append_attend_all(
        &mut self,
        layer: usize,
        batch: &Batch,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        params: &AttnParams,
        out: &mut [f32],
    ) {
        let (q_row, kv_row) = (
            params.n_heads * params.head_dim,
            params.n_kv_heads * params.head_dim,
        );
        for (i, span) in batch.seqs.iter().enumerate() {
            let (qr, kvr) = (span.elems(q_row), span.elems(kv_row));
            self.append_attend(
                layer,
                i,
                &q[qr.clone()],
                &k[kvr.clone()],
                &v[kvr],
                params,
                &mut out[qr],
            );
        }
    }

    /// Called once after the last layer of a step: every sequence now holds its new rows.
    fn advance(&mut self, batch: &Batch);
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
    fn append_attend(
        &mut self,
        layer: usize,
        seq: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        params: &AttnParams,
        out: &mut [f32],
    ) {
        assert_eq!(seq, 0, "a single KvCache holds one sequence");
        append_attend_contiguous(self, layer, q, k, v, params, out);
    }

    fn advance(&mut self, batch: &Batch) {
        let n: usize = batch.seqs.iter().map(|s| s.len).sum();
        KvCache::advance(self, n);
    }
}

/// Several sequences, each with its own contiguous cache, in the order of `Batch::seqs`.
pub struct SeqCaches<'a>(pub Vec<&'a mut KvCache>);

impl KvStore for SeqCaches<'_> {
    fn append_attend(
        &mut self,
        layer: usize,
        seq: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        params: &AttnParams,
        out: &mut [f32],
    ) {
        append_attend_contiguous(self.0[seq], layer, q, k, v, params, out);
    }

    fn advance(&mut self, batch: &Batch) {
        assert_eq!(batch.seqs.len(), self.0.len(), "one cache per sequence");
        for (span, cache) in batch.seqs.iter().zip(self.0.iter_mut()) {
            cache.advance(span.len);
        }
    }
}
