//! [`KvStore`]: where attention writes a step's keys/values and reads each sequence's context.
//!
//! Model code is written once against this trait; what stores the rows is the caller's choice:
//! a contiguous per-sequence [`KvCache`] (single requests, tests, beam search), or the serving
//! engine's paged block pool ([`crate::PagedKv`], on the host or a device). The attention layer
//! hands over a whole step's new rows and queries as tensors; the store appends the rows and
//! runs attention over everything it holds for each sequence, so a paged store can read through
//! its block tables without a copy.

use kiln_tensor::host_kv::{attention, AttnParams};
use kiln_tensor::{AttnArgs, AttnMeta, Device, HostMeta, KvLayout, RelBias, Tensor};

use crate::kv_cache::DeviceRows;
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

/// A step's score biases on its device (ALiBi slopes, T5's relative-position table), uploaded
/// by the step's first layer and read by the rest.
#[derive(Debug)]
pub(crate) struct StepBias {
    alibi: Option<Tensor>,
    rel: Option<(Tensor, isize, usize)>,
}

impl StepBias {
    pub(crate) fn upload(params: &AttnParams, device: Device) -> Result<StepBias> {
        let alibi = match params.alibi_slopes {
            Some(a) => Some(Tensor::from_vec(a.to_vec(), [a.len()])?.to_device(device)?),
            None => None,
        };
        let rel = match params.rel_bias {
            Some(r) => {
                let n_heads = r.values.len() / r.n_rel.max(1);
                let t =
                    Tensor::from_vec(r.values.to_vec(), [n_heads, r.n_rel])?.to_device(device)?;
                Some((t, r.min_rel, r.n_rel))
            }
            None => None,
        };
        Ok(StepBias { alibi, rel })
    }

    pub(crate) fn alibi(&self) -> Option<&Tensor> {
        self.alibi.as_ref()
    }

    pub(crate) fn rel(&self) -> Option<RelBias<'_>> {
        self.rel.as_ref().map(|(values, min_rel, n_rel)| RelBias {
            values,
            min_rel: *min_rel,
            n_rel: *n_rel,
        })
    }
}

/// The step a device [`KvCache`] is in: its first position and rows, their metadata, cache
/// slots and score biases.
#[derive(Debug)]
pub(crate) struct RowsStep {
    start: usize,
    n: usize,
    meta: AttnMeta,
    slots: Tensor,
    bias: StepBias,
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

/// [`KvCache`] on a device: rows appended with `kv_write` into per-layer buffers that double
/// when full, attention over them as packed rows; the step's metadata is uploaded by its first
/// layer.
fn append_attend_device(
    cache: &mut KvCache,
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    params: &AttnParams,
) -> Result<Tensor> {
    let (device, start) = (q.device(), cache.len());
    let (n_kv, hd) = (params.n_kv_heads, params.head_dim);
    let n = k.elem_count() / (n_kv * hd).max(1);
    let n_layers = cache.n_layers();
    let d = cache.device.get_or_insert_with(|| DeviceRows {
        layers: vec![None; n_layers],
        step: None,
    });
    if !matches!(&d.step, Some(st) if st.start == start && st.n == n) {
        let host = HostMeta {
            tok_seq: vec![0; n],
            tok_pos: (start..start + n).map(|p| p as u32).collect(),
            seq_len: vec![(start + n) as u32],
            tables: vec![vec![0]],
        };
        let slots = (start..start + n).map(|p| p as u32).collect();
        d.step = Some(RowsStep {
            start,
            n,
            meta: host.upload(device)?,
            slots: Tensor::from_u32(slots, [n])?.to_device(device)?,
            bias: StepBias::upload(params, device)?,
        });
    }
    let Some(RowsStep {
        meta, slots, bias, ..
    }) = &d.step
    else {
        unreachable!("set above")
    };
    let slot = &mut d.layers[layer];
    let cap = slot.as_ref().map_or(0, |(kc, _)| kc.dims()[0]);
    if start + n > cap {
        let new_cap = (start + n).max(2 * cap).max(256);
        let shape = [new_cap, n_kv, 1, hd];
        let (mut kc, mut vc) = (
            Tensor::zeros_on(shape, k.dtype(), device)?,
            Tensor::zeros_on(shape, k.dtype(), device)?,
        );
        if let Some((ok, ov)) = slot.as_ref().filter(|_| start > 0) {
            let rows = |t: &Tensor| t.narrow(0, 0, start)?.reshape([start, n_kv * hd]);
            let old: Vec<u32> = (0..start as u32).collect();
            let old = Tensor::from_u32(old, [start])?.to_device(device)?;
            Tensor::kv_write(&rows(ok)?, &rows(ov)?, &mut kc, &mut vc, &old)?;
        }
        *slot = Some((kc, vc));
    }
    let (kc, vc) = slot.as_mut().expect("allocated above");
    Tensor::kv_write(k, v, kc, vc, slots)?;
    Ok(Tensor::attention(&AttnArgs {
        q,
        k: kc,
        v: vc,
        layout: KvLayout::rows(n_kv, hd),
        meta,
        n_heads: params.n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: params.scale,
        causal: params.causal,
        window: params.window,
        alibi: bias.alibi(),
        rel_bias: bias.rel(),
    })?)
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
        if q.device() != Device::Cpu {
            return append_attend_device(self, layer, q, k, v, params);
        }
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
        if q.device() != Device::Cpu {
            // One device cache per sequence (beam search): each attends over its own rows.
            let mut outs = Vec::with_capacity(batch.seqs.len());
            for (span, cache) in batch.seqs.iter().zip(self.0.iter_mut()) {
                let rows = |t: &Tensor| t.narrow(0, span.start, span.len);
                outs.push(append_attend_device(
                    cache,
                    layer,
                    &rows(q)?,
                    &rows(k)?,
                    &rows(v)?,
                    params,
                )?);
            }
            return Ok(Tensor::cat_rows(&outs)?);
        }
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
