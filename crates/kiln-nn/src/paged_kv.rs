//! Paged KV storage for the serving engine: [`PagedKvPool`] owns every layer's blocks, and
//! [`PagedKv`] is one step's view of it — the pool plus, for each sequence of the step's
//! [`Batch`] in order, its block table and how many positions are already cached — implementing
//! [`KvStore`] so model code runs unchanged over paged memory.
//!
//! Block ids are plain `u32` (kiln-kv hands them out; this crate does not depend on it), with
//! `u32::MAX` ([`NO_BLOCK`]) for blocks released out of a sliding window. Layout and kernels:
//! `kiln_tensor::cpu::paged_attention` (decode reads blocks in place; prefill gathers).
//!
//! A pool lives on the host ([`PagedKvPool::new`]: f32, f16 or int8 rows, read in place by the
//! CPU kernels) or on a device ([`PagedKvPool::on_device`]: one `(n_blocks, n_kv_heads,
//! block_size, head_dim)` tensor per layer for K and V in the model's dtype, written by
//! `Tensor::kv_write` and read by `Tensor::attention`). A device step's slots and attention
//! metadata are built on the host and uploaded once, by the first layer, then shared.
//!
//! Invariants checked by [`PagedKv::new`]: one table per sequence, each covering the positions
//! `0..cached + new` of its sequence, with real (in-pool) blocks at every position written this
//! step. Positions the kernel reads must not be `NO_BLOCK` (the kernel asserts it): release only
//! blocks that every layer's window has left behind.

use kiln_tensor::host_kv::{AttnParams, PagedLayerKv};
/// Query rows up to which the CPU kernels take the decode path (the step loop cuts prompts
/// above it into blocked chunks, for batch invariance).
pub use kiln_tensor::host_kv::{KvCacheDtype, DECODE_MAX_QUERIES, NO_BLOCK};
use kiln_tensor::{AttnArgs, AttnMeta, DType, Device, HostMeta, KvLayout, Tensor};
use rayon::prelude::*;

use crate::kv_store::{per_sequence, StepBias};
use crate::{Batch, Error, KvStore, Result};

#[derive(Debug, Clone)]
enum Layers {
    Host(Vec<PagedLayerKv>),
    /// Per layer (K, V), each `(n_blocks, n_kv_heads, block_size, head_dim)` on one device.
    Device(Vec<(Tensor, Tensor)>),
}

/// Every layer's K/V blocks: per layer `(n_blocks, n_kv_heads, block_size, head_dim)` for K and V.
#[derive(Debug, Clone)]
pub struct PagedKvPool {
    layers: Layers,
    n_kv_heads: usize,
    head_dim: usize,
    n_blocks: usize,
    block_size: usize,
    dtype: KvCacheDtype,
}

impl PagedKvPool {
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_blocks: usize,
        block_size: usize,
        dtype: KvCacheDtype,
    ) -> PagedKvPool {
        PagedKvPool {
            layers: Layers::Host(
                (0..n_layers)
                    .map(|_| PagedLayerKv::new(dtype, n_blocks, block_size, n_kv_heads, head_dim))
                    .collect(),
            ),
            n_kv_heads,
            head_dim,
            n_blocks,
            block_size,
            dtype,
        }
    }

    /// A pool on `device` holding rows of `elem` (the model's compute dtype): on the CPU, the
    /// host pool of that dtype (f32 or f16); elsewhere, zeroed device tensors.
    #[allow(clippy::too_many_arguments)]
    pub fn on_device(
        device: Device,
        elem: DType,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_blocks: usize,
        block_size: usize,
    ) -> Result<PagedKvPool> {
        let dtype = match elem {
            DType::F16 => KvCacheDtype::F16,
            _ => KvCacheDtype::F32,
        };
        if device == Device::Cpu {
            return Ok(PagedKvPool::new(
                n_layers, n_kv_heads, head_dim, n_blocks, block_size, dtype,
            ));
        }
        let shape = [n_blocks, n_kv_heads, block_size, head_dim];
        let layers = (0..n_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros_on(shape, elem, device)?,
                    Tensor::zeros_on(shape, elem, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(PagedKvPool {
            layers: Layers::Device(layers),
            n_kv_heads,
            head_dim,
            n_blocks,
            block_size,
            dtype,
        })
    }

    /// Where the blocks live.
    pub fn device(&self) -> Device {
        match &self.layers {
            Layers::Host(_) => Device::Cpu,
            Layers::Device(l) => l.first().map_or(Device::Cpu, |(k, _)| k.device()),
        }
    }

    /// Bytes one block takes across all layers, K and V (divide a memory budget by this to size
    /// the pool: `kiln_kv::blocks_for_budget`).
    pub fn bytes_per_block(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        dtype: KvCacheDtype,
    ) -> usize {
        n_layers * PagedLayerKv::bytes_per_block(dtype, block_size, n_kv_heads, head_dim)
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_layers(&self) -> usize {
        match &self.layers {
            Layers::Host(l) => l.len(),
            Layers::Device(l) => l.len(),
        }
    }

    pub fn dtype(&self) -> KvCacheDtype {
        self.dtype
    }

    /// Bytes of storage held by the pool.
    pub fn bytes(&self) -> usize {
        if let Layers::Device(l) = &self.layers {
            return l
                .iter()
                .map(|(k, v)| {
                    k.dtype().bytes_for(k.elem_count()) + v.dtype().bytes_for(v.elem_count())
                })
                .sum();
        }
        self.n_blocks
            * Self::bytes_per_block(
                self.n_layers(),
                self.n_kv_heads,
                self.head_dim,
                self.block_size,
                self.dtype,
            )
    }

    /// Layer `layer`'s keys and values of positions `lo..hi` of a sequence, as f32
    /// `(hi - lo, n_kv_heads, head_dim)` (tests and debugging; kernels read in place).
    pub fn gather(
        &self,
        layer: usize,
        table: &[u32],
        lo: usize,
        hi: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        match &self.layers {
            Layers::Host(l) => l[layer].gather(table, lo, hi),
            Layers::Device(l) => {
                let (bs, row) = (self.block_size, self.head_dim);
                let rows = |t: &Tensor| {
                    let all = t.to_vec_f32();
                    let mut out = Vec::with_capacity((hi - lo) * self.n_kv_heads * row);
                    for j in lo..hi {
                        let b = table[j / bs] as usize;
                        for g in 0..self.n_kv_heads {
                            let at = ((b * self.n_kv_heads + g) * bs + j % bs) * row;
                            out.extend_from_slice(&all[at..at + row]);
                        }
                    }
                    out
                };
                (rows(&l[layer].0), rows(&l[layer].1))
            }
        }
    }
}

/// One forward step over a [`PagedKvPool`]: `tables[i]` and `cached[i]` belong to
/// `batch.seqs[i]`. The caller owns the tables (kiln-kv's `BlockTable::blocks()`), grown to hold
/// this step's tokens before the step.
pub struct PagedKv<'a> {
    pool: &'a mut PagedKvPool,
    tables: Vec<&'a [u32]>,
    cached: Vec<usize>,
    /// Per sequence: its rows are prompt rows that take the blocked attention path however few
    /// they are (see [`PagedKv::prompt_rows`]).
    blocked: Vec<bool>,
    /// A device pool's step: slots and metadata, uploaded by the first layer.
    step: Option<DeviceStep>,
}

struct DeviceStep {
    meta: AttnMeta,
    /// The cache slot of each new row (`block · block_size + offset`).
    slots: Tensor,
    bias: StepBias,
}

impl<'a> PagedKv<'a> {
    pub fn new(
        pool: &'a mut PagedKvPool,
        tables: Vec<&'a [u32]>,
        cached: Vec<usize>,
        batch: &Batch,
    ) -> Result<PagedKv<'a>> {
        let bad = |seq: usize, reason: String| Err(Error::PagedKv { seq, reason });
        if tables.len() != batch.seqs.len() || cached.len() != batch.seqs.len() {
            return bad(
                0,
                format!(
                    "{} tables and {} cached lengths for {} sequences",
                    tables.len(),
                    cached.len(),
                    batch.seqs.len()
                ),
            );
        }
        let bs = pool.block_size;
        for (i, ((table, &c), span)) in tables.iter().zip(&cached).zip(&batch.seqs).enumerate() {
            let end = c + span.len;
            if table.len() < end.div_ceil(bs) {
                return bad(
                    i,
                    format!(
                        "block table of {} blocks cannot hold {end} positions",
                        table.len()
                    ),
                );
            }
            if let Some(&b) = table
                .iter()
                .find(|&&b| b != NO_BLOCK && b as usize >= pool.n_blocks)
            {
                return bad(i, format!("block {b} outside a pool of {}", pool.n_blocks));
            }
            if span.len > 0 && table[c / bs..end.div_ceil(bs)].contains(&NO_BLOCK) {
                return bad(
                    i,
                    format!("positions {c}..{end} to write include a released block"),
                );
            }
        }
        let blocked = vec![false; tables.len()];
        Ok(PagedKv {
            pool,
            tables,
            cached,
            blocked,
            step: None,
        })
    }

    /// Marks which sequences' rows are a chunk of a prompt longer than the decode kernel's
    /// query limit: their attention takes the blocked path even for a chunk of a few rows, as a
    /// one-shot prefill of the whole prompt does, so a prompt gives the same bits however the
    /// scheduler cuts it into chunks (batch invariance). Other rows keep the kernel's choice.
    pub fn prompt_rows(mut self, blocked: Vec<bool>) -> PagedKv<'a> {
        assert_eq!(blocked.len(), self.tables.len(), "one flag per sequence");
        self.blocked = blocked;
        self
    }
}

impl PagedKv<'_> {
    /// The step's device metadata, built and uploaded on first use.
    fn device_step(
        &mut self,
        batch: &Batch,
        params: &AttnParams,
        device: Device,
    ) -> Result<&DeviceStep> {
        if self.step.is_none() {
            let bs = self.pool.block_size;
            let mut host = HostMeta::default();
            let mut slots = Vec::with_capacity(batch.n_tokens());
            for (i, span) in batch.seqs.iter().enumerate() {
                let (table, cached) = (self.tables[i], self.cached[i]);
                for j in 0..span.len {
                    let pos = cached + j;
                    host.tok_seq.push(i as u32);
                    host.tok_pos.push(pos as u32);
                    slots.push(table[pos / bs] * bs as u32 + (pos % bs) as u32);
                }
                host.seq_len.push((cached + span.len) as u32);
                host.tables.push(table.to_vec());
            }
            self.step = Some(DeviceStep {
                meta: host.upload(device)?,
                slots: Tensor::from_u32(slots, [batch.n_tokens()])?.to_device(device)?,
                bias: StepBias::upload(params, device)?,
            });
        }
        Ok(self.step.as_ref().expect("built above"))
    }
}

impl KvStore for PagedKv<'_> {
    /// Writes every sequence's rows, then attends. On the host, sequences run in parallel
    /// (rayon): a step of many short decodes would otherwise run its attention on one thread.
    fn append_attend_all(
        &mut self,
        layer: usize,
        batch: &Batch,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttnParams,
    ) -> Result<Tensor> {
        if let Layers::Device(_) = self.pool.layers {
            let device = q.device();
            let layout = KvLayout::paged(self.pool.block_size, params.n_kv_heads, params.head_dim);
            self.device_step(batch, params, device)?;
            let step = self.step.as_ref().expect("built above");
            let Layers::Device(layers) = &mut self.pool.layers else {
                unreachable!("matched above")
            };
            let (kc, vc) = &mut layers[layer];
            Tensor::kv_write(k, v, kc, vc, &step.slots)?;
            return Ok(Tensor::attention(&AttnArgs {
                q,
                k: kc,
                v: vc,
                layout,
                meta: &step.meta,
                n_heads: params.n_heads,
                n_kv_heads: params.n_kv_heads,
                head_dim: params.head_dim,
                scale: params.scale,
                causal: params.causal,
                window: params.window,
                alibi: step.bias.alibi(),
                rel_bias: step.bias.rel(),
            })?);
        }
        let Layers::Host(layers) = &mut self.pool.layers else {
            unreachable!("device handled above")
        };
        let kv_row = params.n_kv_heads * params.head_dim;
        let l = &mut layers[layer];
        {
            let (ks, vs) = (k.as_f32_slice()?, v.as_f32_slice()?);
            for (i, span) in batch.seqs.iter().enumerate() {
                let kvr = span.elems(kv_row);
                l.write(self.tables[i], self.cached[i], &ks[kvr.clone()], &vs[kvr]);
            }
        }
        let l = &layers[layer];
        let (tables, cached, blocked) = (&self.tables, &self.cached, &self.blocked);
        if batch.seqs.len() == 1 {
            return per_sequence(batch, q, k, v, params, |i, q, _, _, out| {
                l.attend_with(
                    q,
                    tables[i],
                    cached[i] + batch.seqs[i].len,
                    cached[i],
                    params,
                    blocked[i],
                    out,
                )
            });
        }
        let q_row = params.n_heads * params.head_dim;
        let qs = q.as_f32_slice()?;
        let mut out = vec![0.0f32; batch.n_tokens() * q_row];
        // Each sequence's output rows, split off in batch order (spans are packed back to back).
        let mut outs: Vec<&mut [f32]> = Vec::with_capacity(batch.seqs.len());
        let mut rest = &mut out[..];
        let mut at = 0;
        for span in &batch.seqs {
            assert_eq!(span.start, at, "PagedKv: spans must be packed in order");
            let (head, tail) = rest.split_at_mut(span.len * q_row);
            outs.push(head);
            rest = tail;
            at += span.len;
        }
        outs.into_par_iter()
            .zip(batch.seqs.par_iter())
            .enumerate()
            .for_each(|(i, (o, span))| {
                l.attend_with(
                    &qs[span.elems(q_row)],
                    tables[i],
                    cached[i] + span.len,
                    cached[i],
                    params,
                    blocked[i],
                    o,
                );
            });
        Ok(Tensor::from_vec(out, [batch.n_tokens(), q_row])?)
    }

    /// Counts the step's rows as cached, so the view could serve a following step if its tables
    /// were grown for it (the engine normally builds a fresh view per step).
    fn advance(&mut self, batch: &Batch) {
        for (c, span) in self.cached.iter_mut().zip(&batch.seqs) {
            *c += span.len;
        }
    }
}
