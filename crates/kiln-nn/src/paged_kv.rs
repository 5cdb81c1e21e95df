//! Paged KV storage for the serving engine: [`PagedKvPool`] owns every layer's blocks, and
//! [`PagedKv`] is one step's view of it — the pool plus, for each sequence of the step's
//! [`Batch`] in order, its block table and how many positions are already cached — implementing
//! [`KvStore`] so model code runs unchanged over paged memory.
//!
//! Block ids are plain `u32` (kiln-kv hands them out; this crate does not depend on it), with
//! `u32::MAX` ([`NO_BLOCK`]) for blocks released out of a sliding window. Layout and kernels:
//! `kiln_tensor::cpu::paged_attention` (decode reads blocks in place; prefill gathers).
//!
//! Invariants checked by [`PagedKv::new`]: one table per sequence, each covering the positions
//! `0..cached + new` of its sequence, with real (in-pool) blocks at every position written this
//! step. Positions the kernel reads must not be `NO_BLOCK` (the kernel asserts it): release only
//! blocks that every layer's window has left behind.

use kiln_tensor::cpu::attention::AttnParams;
use kiln_tensor::cpu::paged_attention::PagedLayerKv;
pub use kiln_tensor::cpu::paged_attention::{KvCacheDtype, NO_BLOCK};
use rayon::prelude::*;

use crate::{Batch, Error, KvStore, Result};

/// Every layer's K/V blocks: per layer `(n_blocks, n_kv_heads, block_size, head_dim)` for K and V.
#[derive(Debug, Clone)]
pub struct PagedKvPool {
    layers: Vec<PagedLayerKv>,
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
            layers: (0..n_layers)
                .map(|_| PagedLayerKv::new(dtype, n_blocks, block_size, n_kv_heads, head_dim))
                .collect(),
            n_kv_heads,
            head_dim,
            n_blocks,
            block_size,
            dtype,
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
        self.layers.len()
    }

    pub fn dtype(&self) -> KvCacheDtype {
        self.dtype
    }

    /// Bytes of storage held by the pool.
    pub fn bytes(&self) -> usize {
        self.n_blocks
            * Self::bytes_per_block(
                self.layers.len(),
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
        self.layers[layer].gather(table, lo, hi)
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

impl KvStore for PagedKv<'_> {
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
        let (table, cached) = (self.tables[seq], self.cached[seq]);
        let blocked = self.blocked[seq];
        let n_new = k.len() / (params.n_kv_heads * params.head_dim);
        let l = &mut self.pool.layers[layer];
        l.write(table, cached, k, v);
        l.attend_with(q, table, cached + n_new, cached, params, blocked, out);
    }

    /// Writes every sequence's rows, then attends for the sequences in parallel (rayon): a step
    /// of many short decodes would otherwise run its attention on one thread.
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
        let l = &mut self.pool.layers[layer];
        for (i, span) in batch.seqs.iter().enumerate() {
            let kvr = span.elems(kv_row);
            l.write(self.tables[i], self.cached[i], &k[kvr.clone()], &v[kvr]);
        }
        // Each sequence's output rows, split off in batch order (spans are packed back to back).
        let mut outs: Vec<&mut [f32]> = Vec::with_capacity(batch.seqs.len());
        let mut rest = out;
        let mut at = 0;
        for span in &batch.seqs {
            assert_eq!(span.start, at, "PagedKv: spans must be packed in order");
            let (head, tail) = rest.split_at_mut(span.len * q_row);
            outs.push(head);
            rest = tail;
            at += span.len;
        }
        let l = &self.pool.layers[layer];
        let (tables, cached, blocked) = (&self.tables, &self.cached, &self.blocked);
        outs.into_par_iter()
            .zip(batch.seqs.par_iter())
            .enumerate()
            .for_each(|(i, (o, span))| {
                l.attend_with(
                    &q[span.elems(q_row)],
                    tables[i],
                    cached[i] + span.len,
                    cached[i],
                    params,
                    blocked[i],
                    o,
                );
            });
    }

    /// Counts the step's rows as cached, so the view could serve a following step if its tables
    /// were grown for it (the engine normally builds a fresh view per step).
    fn advance(&mut self, batch: &Batch) {
        for (c, span) in self.cached.iter_mut().zip(&batch.seqs) {
            *c += span.len;
        }
    }
}
