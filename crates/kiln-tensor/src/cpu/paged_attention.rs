//! Paged KV storage of one layer and attention read through a block table (PagedAttention,
//! Kwon et al. 2023; vLLM's `paged_attention_v1/v2` kernels are the GPU counterpart).
//!
//! Layout: K and V each `(n_blocks, n_kv_heads, block_size, head_dim)`. A sequence's position
//! `p` lives in block `table[p / block_size]` at offset `p % block_size`. Head-major within a
//! block (vLLM's value-cache layout) so that one kv head's rows of a block are one contiguous
//! `block_size × head_dim` run: decode reads each block in place through the shared chunked
//! decode kernel (`decode::decode` with a paged `KvRows` source pointing at the rows in place,
//! no gather). The position-major layout `(n_blocks, block_size, n_kv_heads, head_dim)` was measured
//! first: its per-head rows are strided, and with blocks scattered over the pool decode ran 10–15%
//! slower than the contiguous cache at 1024 positions; head-major runs within ~5%.
//! Prefill (more than `DECODE_MAX_QUERIES` queries) gathers the visible rows into a scratch
//! buffer and calls the contiguous blocked path: its gemm wants contiguous keys, and the gather
//! costs O(n_kv) against the O(n_q · n_kv) of the gemm.
//!
//! Int8 storage ([`KvCacheDtype::Int8`]): each (position, kv head) row is quantized symmetrically
//! with its own f32 scale, `x ≈ scale · q`, `scale = absmax / 127`, `q = round(x / scale)`, so the
//! per-element error is at most `scale / 2`. Rows are dequantized on the fly, one decode chunk
//! (≤ 128 rows of one head) at a time into a per-thread scratch reused across chunks; the cache
//! is never dequantized whole. (vLLM's fp8 cache uses per-tensor scales; per-row scales cost 4 bytes a row and keep
//! outlier tokens from spoiling their neighbours.) F16 storage ([`KvCacheDtype::F16`]) converts
//! the same way (F16C where the CPU has it), except for the AVX-512 decode kernel, which reads
//! the f16 rows in place and widens them as it loads (`KvRows::rows_f16`): half the bytes of
//! f32 from memory, and decode is memory-bound (`decode_step_bench`, 64 sequences × 160 keys:
//! ~0.75 ms per layer against ~0.9–1.1 for f32). It reads int8 rows in place the same way
//! (`KvRows::rows_i8`), applying a K row's scale to its score and a V row's to its weight.
//!
//! Invariants: positions a query can see (causal, window) must have a real block in the table;
//! entries for positions before every query's window may be `NO_BLOCK` and are never read.

use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::attention::{attention_blocked, AttnParams, DECODE_MAX_QUERIES};
use super::decode::{decode, KvRows, Stored};

/// Table entry of a block released out of the window (same sentinel as `kiln_kv::NO_BLOCK`).
pub const NO_BLOCK: u32 = u32::MAX;

/// Element type of the KV cache (`--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    #[default]
    F32,
    /// IEEE half: 2× smaller, error ~2⁻¹¹ relative per element.
    F16,
    /// int8 with one f32 scale per (position, kv head): about 3.8× smaller at head_dim 64.
    Int8,
}

impl KvCacheDtype {
    /// Bytes one (position, kv head) row of `head_dim` takes, scale included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvCacheDtype::F32 => 4 * head_dim,
            KvCacheDtype::F16 => 2 * head_dim,
            KvCacheDtype::Int8 => head_dim + 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV cache dtype {0:?} (expected auto, f32, float32, f16, float16 or int8)")]
pub struct UnknownKvCacheDtype(pub String);

impl FromStr for KvCacheDtype {
    type Err = UnknownKvCacheDtype;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "f32" | "float32" | "fp32" => Ok(KvCacheDtype::F32),
            "f16" | "float16" | "half" | "fp16" => Ok(KvCacheDtype::F16),
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
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    Int8 {
        k: Vec<i8>,
        v: Vec<i8>,
        /// `(n_blocks, n_kv_heads, block_size)`, one per row
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

/// `dst = scale · src`, converting int8 to f32 (AVX2: eight lanes at a time).
fn dequantize_row(src: &[i8], scale: f32, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::vec::has_avx2_fma() && src.len().is_multiple_of(8) {
        // SAFETY: AVX2 is available (checked above).
        return unsafe { dequantize_row_avx2(src, scale, dst) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x as f32 * scale;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequantize_row_avx2(src: &[i8], scale: f32, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(dst.len() >= src.len() && src.len().is_multiple_of(8));
    let s = _mm256_set1_ps(scale);
    for i in (0..src.len()).step_by(8) {
        // SAFETY: i + 8 <= src.len() <= dst.len() (asserted above); loadl reads 8 bytes.
        let b = _mm_loadl_epi64(src.as_ptr().add(i) as *const __m128i);
        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(f, s));
    }
}

/// Asks Linux to back a pool buffer with transparent huge pages (`madvise(MADV_HUGEPAGE)`; THP
/// is often in `madvise` mode, where only memory asking for it gets them). Decode streams the
/// whole cache from DRAM every step in block pieces (4 KB for SmolLM2's f32 rows) scattered over
/// the pool: with 4 KB pages nearly every piece misses the TLB. Measured with the
/// `decode_step_bench` example: ~10% less time per layer. Only the whole 2 MB pages inside the
/// buffer are advised; the pools come zeroed from `calloc`, untouched, so they get huge pages as
/// they fault in.
/// Best effort: `None` where the kernel refused (THP off), which changes nothing else.
fn advise_huge_pages<T>(buf: &[T]) -> Option<()> {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (buf.as_ptr() as usize, std::mem::size_of_val(buf));
        let (a, e) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
        if e > a {
            // SAFETY: [a, e) lies inside `buf`'s allocation, owned by this process for at least
            // as long as the call; MADV_HUGEPAGE only tells the kernel how to back the pages and
            // changes no contents.
            let r = unsafe { libc::madvise(a as *mut libc::c_void, e - a, libc::MADV_HUGEPAGE) };
            return (r == 0).then_some(());
        }
    }
    let _ = buf;
    None
}

/// f16 to f32. F16C when the CPU has it: `half`'s slice conversion detects it per call and
/// converts through helper calls, which measured ~40% slower on decode than this loop.
fn widen_row(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() && src.len().is_multiple_of(8) {
        // SAFETY: F16C and AVX are available (checked above).
        return unsafe { widen_row_f16c(src, dst) };
    }
    src.convert_to_f32_slice(dst);
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_row_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(dst.len() >= src.len() && src.len().is_multiple_of(8));
    for i in (0..src.len()).step_by(8) {
        // SAFETY: i + 8 <= src.len() <= dst.len() (asserted above); 8 halves are 16 bytes.
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
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
            KvCacheDtype::F16 => Data::F16 {
                // Zero bits from `calloc`, untouched until written (huge pages apply, see
                // `advise_huge_pages`); `vec![f16::ZERO; n]` would write every element.
                k: vec![0u16; n].reinterpret_into(),
                v: vec![0u16; n].reinterpret_into(),
            },
            KvCacheDtype::Int8 => Data::Int8 {
                k: vec![0; n],
                v: vec![0; n],
                k_scale: vec![0.0; rows],
                v_scale: vec![0.0; rows],
            },
        };
        match &data {
            Data::F32 { k, v } => advise_huge_pages(k).and(advise_huge_pages(v)),
            Data::F16 { k, v } => advise_huge_pages(k).and(advise_huge_pages(v)),
            Data::Int8 { k, v, .. } => advise_huge_pages(k).and(advise_huge_pages(v)),
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
            Data::F16 { .. } => KvCacheDtype::F16,
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

    /// Index of the (slot, kv head) row: rows of one head of one block are consecutive.
    fn row(&self, slot: usize, h: usize) -> usize {
        let (b, o) = (slot / self.block_size, slot % self.block_size);
        (b * self.n_kv_heads + h) * self.block_size + o
    }

    /// Writes rows `k`, `v` — `(n, n_kv_heads, head_dim)` — at positions `start..start + n`.
    pub fn write(&mut self, table: &[u32], start: usize, k: &[f32], v: &[f32]) {
        let (nkv, hd) = (self.n_kv_heads, self.head_dim);
        assert_eq!(k.len(), v.len(), "paged KV write: k and v sizes");
        for (t, (kr, vr)) in k
            .chunks_exact(nkv * hd)
            .zip(v.chunks_exact(nkv * hd))
            .enumerate()
        {
            let s = self.slot(table, start + t);
            for h in 0..nkv {
                let r = self.row(s, h);
                let (x, kh, vh) = (r * hd, &kr[h * hd..(h + 1) * hd], &vr[h * hd..(h + 1) * hd]);
                match &mut self.data {
                    Data::F32 { k, v } => {
                        k[x..x + hd].copy_from_slice(kh);
                        v[x..x + hd].copy_from_slice(vh);
                    }
                    Data::F16 { k, v } => {
                        k[x..x + hd].convert_from_f32_slice(kh);
                        v[x..x + hd].convert_from_f32_slice(vh);
                    }
                    Data::Int8 {
                        k,
                        v,
                        k_scale,
                        v_scale,
                    } => {
                        k_scale[r] = quantize_row(kh, &mut k[x..x + hd]);
                        v_scale[r] = quantize_row(vh, &mut v[x..x + hd]);
                    }
                }
            }
        }
    }

    /// Row `r` (see [`Self::row`]) of K, or of V with `values`, as f32 into `dst`.
    fn load_row(&self, values: bool, r: usize, dst: &mut [f32]) {
        self.load_rows(values, r, 1, dst);
    }

    /// Rows `r..r + n` (consecutive: one head's rows within a block) as f32 into `dst`.
    fn load_rows(&self, values: bool, r: usize, n: usize, dst: &mut [f32]) {
        let hd = self.head_dim;
        let at = r * hd..(r + n) * hd;
        match &self.data {
            Data::F32 { k, v } => dst.copy_from_slice(&(if values { v } else { k })[at]),
            Data::F16 { k, v } => widen_row(&(if values { v } else { k })[at], dst),
            Data::Int8 {
                k,
                v,
                k_scale,
                v_scale,
            } => {
                let (src, scale) = if values { (v, v_scale) } else { (k, k_scale) };
                for ((s, d), &sc) in src[at]
                    .chunks_exact(hd)
                    .zip(dst.chunks_exact_mut(hd))
                    .zip(&scale[r..r + n])
                {
                    dequantize_row(s, sc, d);
                }
            }
        }
    }

    /// Rows of positions `lo..hi`, every kv head, as f32 `(hi - lo, n_kv_heads, head_dim)`.
    pub fn gather(&self, table: &[u32], lo: usize, hi: usize) -> (Vec<f32>, Vec<f32>) {
        let (nkv, hd) = (self.n_kv_heads, self.head_dim);
        let row = nkv * hd;
        let (mut ko, mut vo) = (vec![0.0; (hi - lo) * row], vec![0.0; (hi - lo) * row]);
        for (pos, (kd, vd)) in (lo..hi).zip(ko.chunks_exact_mut(row).zip(vo.chunks_exact_mut(row)))
        {
            let s = self.slot(table, pos);
            for h in 0..nkv {
                self.load_row(false, self.row(s, h), &mut kd[h * hd..(h + 1) * hd]);
                self.load_row(true, self.row(s, h), &mut vd[h * hd..(h + 1) * hd]);
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
        self.attend_with(q, table, n_kv, q_start, p, false, out)
    }

    /// [`attend`](Self::attend); with `blocked`, few queries take the blocked (prompt) path too
    /// (see `attention_blocked`).
    #[allow(clippy::too_many_arguments)]
    pub fn attend_with(
        &self,
        q: &[f32],
        table: &[u32],
        n_kv: usize,
        q_start: usize,
        p: &AttnParams,
        blocked: bool,
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
        if n_q <= DECODE_MAX_QUERIES && !blocked {
            decode(q, &PagedRows { layer: self, table }, n_kv, q_start, p, out);
        } else {
            // Positions any query can see start at the first query's window; the shift by `lo`
            // changes nothing (causal and window masks and ALiBi depend on j - p only).
            let lo = p.visible(q_start, n_kv).0;
            let (k, v) = self.gather(table, lo, n_kv);
            attention_blocked(q, &k, &v, q_start - lo, p, out);
        }
    }
}

/// A sequence's rows read in place through its block table.
pub(crate) struct PagedRows<'a> {
    pub layer: &'a PagedLayerKv,
    pub table: &'a [u32],
}

impl KvRows for PagedRows<'_> {
    fn stored(&self) -> Stored {
        match self.layer.data {
            Data::F32 { .. } => Stored::F32,
            Data::F16 { .. } => Stored::F16,
            Data::Int8 { .. } => Stored::Int8,
        }
    }

    fn rows_i8<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        values: bool,
        out: &mut [&'s [i8]],
        scales: &mut [f32],
    ) {
        let l = self.layer;
        let Data::Int8 {
            k,
            v,
            k_scale,
            v_scale,
        } = &l.data
        else {
            return;
        };
        let (src, scale) = if values { (v, v_scale) } else { (k, k_scale) };
        for_each_piece(l, self.table, kh, c0, out, src);
        // The scales of a block piece's rows are consecutive too (one per row).
        let (bs, c1) = (l.block_size, c0 + out.len());
        let mut p = c0;
        while p < c1 {
            let end = ((p / bs + 1) * bs).min(c1);
            let r = l.row(l.slot(self.table, p), kh);
            scales[p - c0..end - c0].copy_from_slice(&scale[r..r + (end - p)]);
            p = end;
        }
    }

    fn rows_f16<'s>(&'s self, kh: usize, c0: usize, values: bool, out: &mut [&'s [f16]]) {
        let l = self.layer;
        let Data::F16 { k, v } = &l.data else {
            return;
        };
        let src = if values { v } else { k };
        for_each_piece(l, self.table, kh, c0, out, src);
    }

    fn rows<'s>(
        &'s self,
        kh: usize,
        c0: usize,
        values: bool,
        scratch: &'s mut Vec<f32>,
        out: &mut [&'s [f32]],
    ) {
        let l = self.layer;
        let (bs, hd, c1) = (l.block_size, l.head_dim, c0 + out.len());
        match &l.data {
            Data::F32 { k, v } => {
                for_each_piece(l, self.table, kh, c0, out, if values { v } else { k })
            }
            // Other formats: dequantize the chunk's rows of this head into the scratch.
            Data::F16 { .. } | Data::Int8 { .. } => {
                // Every element up to `need` is overwritten below: grow only, no clearing.
                let need = (c1 - c0) * hd;
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                let mut p = c0;
                while p < c1 {
                    let end = ((p / bs + 1) * bs).min(c1);
                    let r = l.row(l.slot(self.table, p), kh);
                    let dst = &mut scratch[(p - c0) * hd..(end - c0) * hd];
                    l.load_rows(values, r, end - p, dst);
                    p = end;
                }
                let rows: &'s [f32] = &scratch[..need];
                for (o, r) in out.iter_mut().zip(rows.chunks_exact(hd)) {
                    *o = r;
                }
            }
        }
    }
}

/// Points `out[t]` at the row of key `c0 + t` of kv head `kh` in `src` (a pool buffer of `l`),
/// one block piece (consecutive rows) at a time.
fn for_each_piece<'s, T>(
    l: &PagedLayerKv,
    table: &[u32],
    kh: usize,
    c0: usize,
    out: &mut [&'s [T]],
    src: &'s [T],
) {
    let (bs, hd, c1) = (l.block_size, l.head_dim, c0 + out.len());
    let mut p = c0;
    while p < c1 {
        let end = ((p / bs + 1) * bs).min(c1);
        let start = l.row(l.slot(table, p), kh) * hd;
        let piece = &src[start..start + (end - p) * hd];
        for (o, r) in out[p - c0..end - c0].iter_mut().zip(piece.chunks_exact(hd)) {
            *o = r;
        }
        p = end;
    }
}
