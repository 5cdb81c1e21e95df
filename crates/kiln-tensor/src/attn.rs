//! Attention as one device op: packed queries over keys/values addressed through block tables.
//!
//! Prefill, decode and encoder attention are the same op with different tables: a paged KV
//! pool ([`KvLayout::paged`]) gives each sequence its block table; a contiguous run of rows
//! ([`KvLayout::rows`], an encoder's packed keys or a cross-attention memory) gives each
//! sequence a one-entry table holding its first row. A step's tables, token→sequence map,
//! positions and lengths ([`AttnMeta`]) are built once per step and uploaded once, then every
//! layer's call reads them from device memory.
//!
//! Semantics (the CPU reference in `cpu/backend.rs` and the CUDA kernel agree on them): query
//! `t` of sequence `s = tok_seq[t]` at position `p = tok_pos[t]` sees keys `lo..hi` of the
//! `seq_len[s]` its sequence holds, `hi = min(p + 1, n)` when causal, `lo = p + 1 - window`
//! with a window; scores are `scale · q·k + alibi[h]·(j − p) + rel_bias[h][j − p − min_rel]`.

use crate::{Error, Result, Tensor};

/// How key/value row `j` of a sequence is addressed in a cache tensor: element `d` of kv head
/// `g` sits at `table[j / block_size] * block_stride + g * head_stride + (j % block_size) *
/// row_stride + d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub block_size: usize,
    pub block_stride: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

impl KvLayout {
    /// A paged pool `(n_blocks, n_kv_heads, block_size, head_dim)`.
    pub fn paged(block_size: usize, n_kv_heads: usize, head_dim: usize) -> KvLayout {
        KvLayout {
            block_size,
            block_stride: n_kv_heads * block_size * head_dim,
            head_stride: block_size * head_dim,
            row_stride: head_dim,
        }
    }

    /// Packed rows `(n_rows, n_kv_heads, head_dim)`; a sequence's table entry is its first row.
    pub fn rows(n_kv_heads: usize, head_dim: usize) -> KvLayout {
        KvLayout {
            block_size: i32::MAX as usize,
            block_stride: n_kv_heads * head_dim,
            head_stride: head_dim,
            row_stride: n_kv_heads * head_dim,
        }
    }
}

/// A step's attention metadata (u32 tensors on the step's device).
#[derive(Debug, Clone)]
pub struct AttnMeta {
    /// `(n_tokens,)`: the sequence of each query row.
    pub tok_seq: Tensor,
    /// `(n_tokens,)`: each query's absolute position.
    pub tok_pos: Tensor,
    /// `(n_seqs,)`: keys each sequence holds, this step's included.
    pub seq_len: Tensor,
    /// `(n_seqs, max_blocks)`: block ids (or first rows, for [`KvLayout::rows`]).
    pub block_tables: Tensor,
}

/// Host-side description of a step, from which [`AttnMeta`] is built.
#[derive(Debug, Clone, Default)]
pub struct HostMeta {
    pub tok_seq: Vec<u32>,
    pub tok_pos: Vec<u32>,
    pub seq_len: Vec<u32>,
    /// One table per sequence; shorter ones are padded.
    pub tables: Vec<Vec<u32>>,
}

impl HostMeta {
    /// Uploads the metadata to `device` (four small copies, once per step).
    pub fn upload(&self, device: crate::Device) -> Result<AttnMeta> {
        let n_seq = self.tables.len();
        let width = self.tables.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; n_seq * width];
        for (row, t) in flat.chunks_mut(width).zip(&self.tables) {
            row[..t.len()].copy_from_slice(t);
        }
        let up =
            |v: &[u32], shape: Vec<usize>| Tensor::from_u32(v.to_vec(), shape)?.to_device(device);
        Ok(AttnMeta {
            tok_seq: up(&self.tok_seq, vec![self.tok_seq.len()])?,
            tok_pos: up(&self.tok_pos, vec![self.tok_pos.len()])?,
            seq_len: up(&self.seq_len, vec![self.seq_len.len()])?,
            block_tables: up(&flat, vec![n_seq, width])?,
        })
    }
}

/// T5's bucketed relative bias, looked up per distance: `values (n_heads, n_rel)` holds the
/// bias of distance `j - p = min_rel + r` at column `r`.
#[derive(Debug, Clone, Copy)]
pub struct RelBias<'a> {
    pub values: &'a Tensor,
    pub min_rel: isize,
    pub n_rel: usize,
}

/// Every input of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnArgs<'a> {
    /// `(n_tokens, n_heads, head_dim)` (any 2-D or 3-D shape with that many elements).
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub layout: KvLayout,
    pub meta: &'a AttnMeta,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    pub window: Option<usize>,
    /// `(n_heads,)` f32 ALiBi slopes.
    pub alibi: Option<&'a Tensor>,
    pub rel_bias: Option<RelBias<'a>>,
}

impl AttnArgs<'_> {
    pub(crate) fn check(&self) -> Result<usize> {
        let row = self.n_heads * self.head_dim;
        let bad = |what: String| {
            Err(Error::Invalid {
                op: "attention",
                reason: what,
            })
        };
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if row == 0 || !self.q.elem_count().is_multiple_of(row) {
            return bad(format!(
                "q of shape {:?} is not rows of {row}",
                self.q.dims()
            ));
        }
        let n = self.q.elem_count() / row;
        if self.meta.tok_seq.elem_count() != n || self.meta.tok_pos.elem_count() != n {
            return bad(format!(
                "metadata for {} tokens, q has {n}",
                self.meta.tok_seq.elem_count()
            ));
        }
        Ok(n)
    }
}
