//! Paged KV storage of one layer and attention read through a block table (PagedAttention,
//! Kwon et al. 2023; vLLM's `paged_attention_v1/v2` kernels are the GPU counterpart).
//!
//! Layout: K and V each `(n_blocks, block_size, n_kv_heads, head_dim)`. A sequence's position
//! `p` lives in block `table[p / block_size]` at offset `p % block_size`; a block's rows are
//! contiguous, so decode reads each block in place through the shared chunked decode kernel
//! (`attention::decode` with a paged `KvRows` source: one run per block piece, no gather).
//! Prefill (more than `DECODE_MAX_QUERIES` queries) gathers the visible rows into a scratch
//! buffer and calls the contiguous blocked path: its gemm wants contiguous keys, and the gather
//! costs O(n_kv) against the O(n_q · n_kv) of the gemm.
//!
//! Int8 storage ([`KvCacheDtype::Int8`]): each (position, kv head) row is quantized symmetrically
//! with its own f32 scale, `x ≈ scale · q`, `scale = absmax / 127`, `q = round(x / scale)`, so the
//! per-element error is at most `scale / 2`. Rows are dequantized on the fly, one decode chunk
//! (≤ 128 rows of one head) at a time into a per-task scratch; the cache is never dequantized
//! whole. (vLLM's fp8 cache uses per-tensor scales; per-row scales cost 4 bytes a row and keep
//! outlier tokens from spoiling their neighbours.)
//!
//! Invariants: positions a query can see (causal, window) must have a real block in the table;
//! entries for positions before every query's window may be `NO_BLOCK` and are never read.

use std::str::FromStr;

use super::attention::{attention, decode, AttnParams, KvRows, Run, DECODE_MAX_QUERIES};

/// Table entry of a block released out of the window (same sentinel as `kiln_kv::NO_BLOCK`).
pub const NO_BLOCK: u32 = u32::MAX;

/// Element type of the KV cache (`--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    #[default]
    F32,
    /// int8 with one f32 scale per (position, kv head): about 3.8× smaller at head_dim 64.
    Int8,
}

impl KvCacheDtype {
    /// Bytes one (position, kv head) row of `head_dim` takes, scale included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvCacheDtype::F32 => 4 * head_dim,
            KvCacheDtype::Int8 => head_dim + 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV cache dtype {0:?} (expected auto, f32, float32 or int8)")]
pub struct UnknownKvCacheDtype(pub String);

impl FromStr for KvCacheDtype {
    type Err = UnknownKvCacheDtype;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "f32" | "float32" | "fp32" => Ok(KvCacheDtype::F32),
            "int8" | "i8" => Ok(KvCacheDtype::Int8),
            _ => Err(UnknownKvCacheDtype(s.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
enum Data {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    Int8 {
        k: Vec<i8>,
        v: Vec<i8>,
        /// `(n_blocks, block_size, n_kv_heads)`
        k_scale: Vec<f32>,
        v_scale: Vec<f32>,
    },
}

/// One layer's K and V blocks.
#[derive(Debug, Clone)]
pub struct PagedLayerKv {
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_blocks: usize,
    data: Data,
}

fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = absmax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (d, s) in q.iter_mut().zip(x) {
        *d = (s * inv).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

impl PagedLayerKv {
    pub fn new(
        dtype: KvCacheDtype,
        n_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> PagedLayerKv {
        let n = n_blocks * block_size * n_kv_heads * head_dim;
        let rows = n_blocks * block_size * n_kv_heads;
        let data = match dtype {
            KvCacheDtype::F32 => Data::F32 {
                k: vec![0.0; n],
                v: vec![0.0; n],
            },
            KvCacheDtype::Int8 => Data::Int8 {
                k: vec![0; n],
                v: vec![0; n],
                k_scale: vec![0.0; rows],
                v_scale: vec![0.0; rows],
            },
        };
        PagedLayerKv {
            block_size,
            n_kv_heads,
            head_dim,
            n_blocks,
            data,
        }
    }

    /// Bytes one block takes in one layer, K and V together.
    pub fn bytes_per_block(
        dtype: KvCacheDtype,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> usize {
        2 * block_size * n_kv_heads * dtype.row_bytes(head_dim)
    }

    pub fn dtype(&self) -> KvCacheDtype {
        match self.data {
            Data::F32 { .. } => KvCacheDtype::F32,
            Data::Int8 { .. } => KvCacheDtype::Int8,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Index of position `pos`'s row (all kv heads) in the `(n_blocks * block_size)` row space.
    fn slot(&self, table: &[u32], pos: usize) -> usize {
        let b = table[pos / self.block_size];
        assert!(
            b != NO_BLOCK && (b as usize) < self.n_blocks,
            "paged KV: position {pos} maps to block {b} (released or out of the pool)"
        );
        b as usize * self.block_size + pos % self.block_size
    }

    /// Writes rows `k`, `v` — `(n, n_kv_heads, head_dim)` — at positions `start..start + n`.
    pub fn write(&mut self, table: &[u32], start: usize, k: &[f32], v: &[f32]) {
        let (nkv, hd) = (self.n_kv_heads, self.head_dim);
        let row = nkv * hd;
        assert_eq!(k.len(), v.len(), "paged KV write: k and v sizes");
        for (t, (kr, vr)) in k.chunks_exact(row).zip(v.chunks_exact(row)).enumerate() {
            let s = self.slot(table, start + t);
            match &mut self.data {
                Data::F32 { k, v } => {
                    k[s * row..(s + 1) * row].copy_from_slice(kr);
                    v[s * row..(s + 1) * row].copy_from_slice(vr);
                }
                Data::Int8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    for h in 0..nkv {
                        let (x, y) = ((s * nkv + h) * hd, h * hd);
                        k_scale[s * nkv + h] = quantize_row(&kr[y..y + hd], &mut k[x..x + hd]);
                        v_scale[s * nkv + h] = quantize_row(&vr[y..y + hd], &mut v[x..x + hd]);
                    }
                }
            }
        }
    }

    /// Rows of positions `lo..hi`, every kv head, as f32 `(hi - lo, n_kv_heads, head_dim)`.
    pub fn gather(&self, table: &[u32], lo: usize, hi: usize) -> (Vec<f32>, Vec<f32>) {
        let row = self.n_kv_heads * self.head_dim;
        let (mut ko, mut vo) = (vec![0.0; (hi - lo) * row], vec![0.0; (hi - lo) * row]);
        for pos in lo..hi {
            let s = self.slot(table, pos);
            let o = (pos - lo) * row;
            match &self.data {
                Data::F32 { k, v } => {
                    ko[o..o + row].copy_from_slice(&k[s * row..(s + 1) * row]);
                    vo[o..o + row].copy_from_slice(&v[s * row..(s + 1) * row]);
                }
                Data::Int8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    let hd = self.head_dim;
                    for h in 0..self.n_kv_heads {
                        let x = (s * self.n_kv_heads + h) * hd;
                        let (ks, vs) = (
                            k_scale[s * self.n_kv_heads + h],
                            v_scale[s * self.n_kv_heads + h],
                        );
                        for d in 0..hd {
                            ko[o + h * hd + d] = k[x + d] as f32 * ks;
                            vo[o + h * hd + d] = v[x + d] as f32 * vs;
                        }
                    }
                }
            }
        }
        (ko, vo)
    }

    /// Attention of `q` `(n_q, n_heads, head_dim)` at positions `q_start..` over the sequence's
    /// positions `0..n_kv` held in the blocks of `table`. Same contract as `attention`.
    pub fn attend(
        &self,
        q: &[f32],
        table: &[u32],
        n_kv: usize,
        q_start: usize,
        p: &AttnParams,
        out: &mut [f32],
    ) {
        let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
        assert!(
            nkv == self.n_kv_heads && hd == self.head_dim && nh % nkv == 0,
            "paged attention: head layout does not match the pool"
        );
        assert_eq!(out.len(), q.len(), "paged attention: output size");
        assert!(
            n_kv.div_ceil(self.block_size) <= table.len(),
            "paged attention: block table shorter than {n_kv} positions"
        );
        let n_q = q.len() / (nh * hd);
        if n_q == 0 {
            return;
        }
        if n_q <= DECODE_MAX_QUERIES {
            decode(q, &PagedRows { layer: self, table }, n_kv, q_start, p, out);
        } else {
            // Positions any query can see start at the first query's window; the shift by `lo`
            // changes nothing (causal and window masks and ALiBi depend on j - p only).
            let lo = p.visible(q_start, n_kv).0;
            let (k, v) = self.gather(table, lo, n_kv);
            attention(q, &k, &v, q_start - lo, p, out);
        }
    }
}

/// A sequence's rows read in place through its block table.
struct PagedRows<'a> {
    layer: &'a PagedLayerKv,
    table: &'a [u32],
}

impl KvRows for PagedRows<'_> {
    fn runs<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        c1: usize,
        values: bool,
        scratch: &'s mut Vec<f32>,
        out: &mut Vec<Run<'s>>,
    ) {
        let l = self.layer;
        let (bs, nkv, hd) = (l.block_size, l.n_kv_heads, l.head_dim);
        match &l.data {
            Data::F32 { k, v } => {
                let src = if values { v } else { k };
                let mut p = c0;
                while p < c1 {
                    let end = ((p / bs + 1) * bs).min(c1);
                    let s = l.slot(self.table, p);
                    let start = (s * nkv + kh) * hd;
                    out.push(Run {
                        off: p - c0,
                        n: end - p,
                        rows: &src[start..start + (end - p - 1) * nkv * hd + hd],
                        stride: nkv * hd,
                    });
                    p = end;
                }
            }
            Data::Int8 {
                k,
                v,
                k_scale,
                v_scale,
            } => {
                let (src, scales) = if values { (v, v_scale) } else { (k, k_scale) };
                scratch.clear();
                scratch.resize((c1 - c0) * hd, 0.0);
                for (pos, dst) in (c0..c1).zip(scratch.chunks_exact_mut(hd)) {
                    let r = l.slot(self.table, pos) * nkv + kh;
                    let sc = scales[r];
                    for (d, &x) in dst.iter_mut().zip(&src[r * hd..(r + 1) * hd]) {
                        *d = x as f32 * sc;
                    }
                }
                out.push(Run {
                    off: 0,
                    n: c1 - c0,
                    rows: scratch,
                    stride: hd,
                });
            }
        }
    }
}
