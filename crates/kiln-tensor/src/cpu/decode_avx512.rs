//! The AVX-512F decode kernel (see `decode.rs` for the task split and the partials it fills),
//! for head_dim a multiple of 16, chosen at run time (the crate is built for baseline x86-64).
//! The portable `decode::decode_chunk` is its reference in tests; `decode_avx2.rs` holds the
//! kernel for CPUs with AVX2 only.
//!
//! Per task (one query, a chunk of up to 128 keys, up to `KV_TILE` kv heads):
//! - Scores: keys in blocks of 16; per block every kv head and every query head of its GQA
//!   group, so a block's K rows are read from memory once (the kv heads' rows of a pool block
//!   are adjacent: one sweep) and from L1 for the other query heads. Four keys at a time keep
//!   one 16-lane accumulator each; a shuffle tree (`reduce4`, `reduce16`) then sums 16 keys'
//!   accumulators into one vector of 16 scores — about 3 shuffles/adds per score instead of the
//!   ~8 of a horizontal sum per key.
//! - Softmax: vectorised scale, max, and a polynomial exp (`exp512`: Cephes' expf, max relative
//!   error ~2 ulp, exactly 0 below -104 and at -inf), instead of one libm `expf` call per score.
//! - Weighted sum of V: up to 4 heads × 64 dims of accumulators live in registers (const
//!   generic tiles) while each V row is read once for all of them; the AVX2 kernel this replaces
//!   kept its accumulators in a stack array, so every FMA waited on the previous row's store.
//! - Prefetch: the chunk's K rows into L2 up front, then per block the next block's K rows into
//!   L1 and this block's V rows into L2. Once the arithmetic is this cheap the kernel waits on
//!   memory: a serving step's cache (~0.5 GB for 64 × 200 keys of SmolLM2) is streamed from
//!   DRAM in 4 KB block pieces, which this machine reads at ~6–9 GB/s per core (13 with huge
//!   pages and 12 KB pieces; see `paged_attention.rs` for the huge pages).
//!
//! It reads f32 rows, or f16 / int8 rows in place (`Elem`), widening them as it loads (int8:
//! a K row's scale multiplies its score, a V row's its weight).
//!
//! The kernels differ from each other in the last bits (summation order); each is deterministic
//! and a process uses one of them for every decode (`Kernel::best`), so batch invariance holds.

use std::arch::x86_64::*;

use super::activation::{EXP_POLY, LN2_HI, LN2_LO};

use half::f16;

use super::decode::{fetch_rows, Buffers, Chunk, KvRows, DECODE_CHUNK, KV_TILE};

/// A cache element type the AVX-512 kernel reads directly: f32, or f16 widened as it loads
/// (half the bytes from memory, no scratch; `vcvtph2ps` is exact).
pub(crate) trait Elem: Copy + Sync {
    /// Whether rows come with a scale each (int8): the row is `scale · row`.
    const SCALED: bool = false;

    /// Fetches the chunk's K (or V) rows of this type into `rows`, each `head_dim` long, and
    /// for `SCALED` types their scales into `scales`.
    fn fetch<'s, S: KvRows>(
        c: &'s Chunk<S>,
        values: bool,
        scratch: &'s mut Vec<f32>,
        rows: &mut [&'s [Self]],
        scales: &mut [f32],
    );

    /// 16 values from `p`, as f32.
    ///
    /// # Safety
    /// Requires AVX-512F; 16 elements readable at `p`.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Elem for f32 {
    fn fetch<'s, S: KvRows>(
        c: &'s Chunk<S>,
        values: bool,
        scratch: &'s mut Vec<f32>,
        rows: &mut [&'s [f32]],
        _scales: &mut [f32],
    ) {
        fetch_rows(c, values, scratch, rows)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: 16 floats readable at p (the caller's contract).
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl Elem for f16 {
    fn fetch<'s, S: KvRows>(
        c: &'s Chunk<S>,
        values: bool,
        _scratch: &'s mut Vec<f32>,
        rows: &mut [&'s [f16]],
        _scales: &mut [f32],
    ) {
        c.src.rows_f16(c.kh, c.c0, values, rows);
        let hd = c.p.head_dim;
        assert!(rows.iter().all(|r| r.len() == hd), "decode: f16 row length");
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: 16 halves (32 bytes) readable at p (the caller's contract).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

impl Elem for i8 {
    const SCALED: bool = true;

    fn fetch<'s, S: KvRows>(
        c: &'s Chunk<S>,
        values: bool,
        _scratch: &'s mut Vec<f32>,
        rows: &mut [&'s [i8]],
        scales: &mut [f32],
    ) {
        c.src.rows_i8(c.kh, c.c0, values, rows, scales);
        let hd = c.p.head_dim;
        assert!(
            rows.iter().all(|r| r.len() == hd),
            "decode: int8 row length"
        );
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(p: *const i8) -> __m512 {
        // SAFETY: 16 bytes readable at p (the caller's contract).
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
}

/// `exp(x)` per lane: Cephes' `expf` (x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial in r,
/// times 2ⁿ by `scalef`, which also gives the subnormal results right), exactly 0 for
/// x < -104 and -inf, +inf past 88.7.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn exp512(x: __m512) -> __m512 {
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-104.0));
    let x = _mm512_max_ps(
        _mm512_min_ps(x, _mm512_set1_ps(88.72)),
        _mm512_set1_ps(-104.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // ln2 split in two so that n·ln2_hi is exact: r keeps its bits for n up to ±150.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut y = _mm512_set1_ps(EXP_POLY[0]);
    for coef in EXP_POLY[1..].iter().copied() {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(coef));
    }
    let y = _mm512_fmadd_ps(
        y,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n))
}

/// `v_tile512::<E, H, W>` for the H and W of a tile (picked at run time).
type Tile512<E> = unsafe fn(&[&[E]], &[f32], &mut [f32], usize, usize);

/// Prefetches the cache lines of one row into the cache level `HINT` names.
#[inline]
fn prefetch_row<const HINT: i32, E>(row: &[E]) {
    let p = row.as_ptr();
    let mut d = 0;
    while d < row.len() {
        // SAFETY: d < row.len(): the address is in bounds (a prefetch would not fault anyway).
        unsafe { _mm_prefetch::<HINT>(p.add(d).cast()) };
        d += 64 / std::mem::size_of::<E>();
    }
}

/// Lanes `0..n` of 16 (`n <= 16`).
#[inline]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// Four vectors to one whose 128-bit quarter `u` holds four values summing to all of `a[u]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce4(a: [__m512; 4]) -> __m512 {
    // [a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3] for the pairs (a0, a1), (a2, a3).
    let t0 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(a[0], a[1]),
        _mm512_shuffle_f32x4::<0xEE>(a[0], a[1]),
    );
    let t1 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(a[2], a[3]),
        _mm512_shuffle_f32x4::<0xEE>(a[2], a[3]),
    );
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(t0, t1),
        _mm512_shuffle_f32x4::<0xDD>(t0, t1),
    )
}

/// Four `reduce4` results (keys `4j..4j + 4` in `u[j]`) to the 16 sums in key order.
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce16(u: [__m512; 4]) -> __m512 {
    // Within each quarter: pairwise sums, twice; quarter i then holds keys i, 4+i, 8+i, 12+i.
    let v0 = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(u[0], u[1]),
        _mm512_shuffle_ps::<0xDD>(u[0], u[1]),
    );
    let v1 = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(u[2], u[3]),
        _mm512_shuffle_ps::<0xDD>(u[2], u[3]),
    );
    let w = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(v0, v1),
        _mm512_shuffle_ps::<0xDD>(v0, v1),
    );
    // Lane 4i + j holds key 4j + i: transpose the 4×4.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(idx, w)
}

/// AVX-512 kernel for the chunks `cs` of one task: the same query and keys, kv heads
/// `cs[0].kh..` (at most `KV_TILE`, consecutive). Writes each kv head's partial (the contract of
/// `decode::decode_chunk`) into `part`, one after the other.
///
/// # Safety
/// Requires AVX-512F and `head_dim % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn decode_heads_avx512<S: KvRows, E: Elem>(
    cs: &[Chunk<S>],
    b: &mut Buffers,
    part: &mut [f32],
) {
    let (m, c) = (cs.len(), &cs[0]);
    let (group, hd, n) = (c.group(), c.p.head_dim, c.c1 - c.c0);
    let plen = group * (hd + 2);
    assert!(hd.is_multiple_of(16) && n <= DECODE_CHUNK && (1..=KV_TILE).contains(&m));
    assert!(part.len() == m * plen);
    let (scratch, scores) = b.split(m * group * n);
    let mut krows: [[&[E]; DECODE_CHUNK]; KV_TILE] = [[&[]; DECODE_CHUNK]; KV_TILE];
    let mut vrows: [[&[E]; DECODE_CHUNK]; KV_TILE] = [[&[]; DECODE_CHUNK]; KV_TILE];
    // Row scales (int8 only).
    let mut kscales = [[0.0f32; DECODE_CHUNK]; KV_TILE];
    let mut vscales = [[0.0f32; DECODE_CHUNK]; KV_TILE];
    let mut scratch = scratch.iter_mut();
    for (j, c) in cs.iter().enumerate() {
        let (sk, sv) = (scratch.next(), scratch.next());
        let (kr, ks) = (&mut krows[j][..n], &mut kscales[j][..n]);
        E::fetch(c, false, sk.expect("2·KV_TILE buffers"), kr, ks);
        let (vr, vs) = (&mut vrows[j][..n], &mut vscales[j][..n]);
        E::fetch(c, true, sv.expect("2·KV_TILE buffers"), vr, vs);
    }
    // The cache does not fit in the CPU caches and its rows lie in block-sized pieces, too short
    // for the hardware prefetcher to ramp up: ask for all of the chunk's K rows into L2 now,
    // then per block for the next block's K rows into L1 and this block's V rows (used after the
    // softmax) into L2. Kv heads innermost: a block's rows of consecutive kv heads are adjacent
    // in the pool. Measured (decode_step_bench, 1 thread): each of the three requests saves
    // time; all V rows up front as well cost time (too many requests in flight at once).
    for kr in &krows[..m] {
        for r in kr[..n].iter() {
            prefetch_row::<_MM_HINT_T1, E>(r);
        }
    }
    let mut t0 = 0;
    while t0 < n {
        let nb = (n - t0).min(16);
        for (kr, vr) in krows[..m].iter().zip(&vrows[..m]) {
            for r in kr[(t0 + 16).min(n)..(t0 + 32).min(n)].iter() {
                prefetch_row::<_MM_HINT_T0, E>(r);
            }
            for r in vr[t0..t0 + nb].iter() {
                prefetch_row::<_MM_HINT_T1, E>(r);
            }
        }
        for (kj, (c, kr)) in cs.iter().zip(&krows).enumerate() {
            // Keys past the chunk's end repeat its last row; their scores are not stored.
            let ptrs: [*const E; 16] = std::array::from_fn(|u| kr[t0 + u.min(nb - 1)].as_ptr());
            for g in 0..group {
                let q = c.q_row(g).as_ptr();
                let mut u = [_mm512_setzero_ps(); 4];
                for (j, uj) in u.iter_mut().enumerate() {
                    if 4 * j >= nb {
                        break;
                    }
                    let mut a = [_mm512_setzero_ps(); 4];
                    for d in (0..hd).step_by(16) {
                        // SAFETY: q_row and every row hold hd values (fetch_rows checked),
                        // d + 16 <= hd.
                        let qv = _mm512_loadu_ps(q.add(d));
                        for (k, ak) in a.iter_mut().enumerate() {
                            let kv = E::load16(ptrs[4 * j + k].add(d));
                            *ak = _mm512_fmadd_ps(qv, kv, *ak);
                        }
                    }
                    *uj = reduce4(a);
                }
                // SAFETY: lanes < nb of score row (kj, g) start at (kj·group + g)·n + t0, and
                // t0 + nb <= n, kj < m: inside the m·group·n scores.
                let out = scores.as_mut_ptr().add((kj * group + g) * n + t0);
                let mut s = reduce16(u);
                if E::SCALED {
                    // q · (scale · row) = scale · (q · row). SAFETY: t0 + nb <= n <= 128.
                    let sc = _mm512_maskz_loadu_ps(lanes(nb), kscales[kj].as_ptr().add(t0));
                    s = _mm512_mul_ps(s, sc);
                }
                _mm512_mask_storeu_ps(out, lanes(nb), s);
            }
        }
        t0 += 16;
    }
    for (j, c) in cs.iter().enumerate() {
        let scores = &mut scores[j * group * n..(j + 1) * group * n];
        let (stats, acc) = part[j * plen..(j + 1) * plen].split_at_mut(2 * group);
        for g in 0..group {
            let row = &mut scores[g * n..(g + 1) * n];
            let (m, s) = softmax_row512(c, g, row);
            stats[g] = m;
            stats[group + g] = s;
            if E::SCALED {
                // p · (scale · row) = (p · scale) · row; the sum above stays unscaled.
                for (x, sc) in row.iter_mut().zip(&vscales[j][..n]) {
                    *x *= sc;
                }
            }
        }
        v_sum512(&vrows[j][..n], scores, acc, group, hd);
    }
}

/// `acc[g·hd + d] = Σ_t probs[g·n + t] · rows[t][d]` for every head `g` of the group, in tiles
/// of up to 4 heads × 64 dims whose accumulators stay in registers.
#[target_feature(enable = "avx512f")]
fn v_sum512<E: Elem>(rows: &[&[E]], probs: &[f32], acc: &mut [f32], group: usize, hd: usize) {
    let n = rows.len();
    for g0 in (0..group).step_by(4) {
        let h = (group - g0).min(4);
        for d0 in (0..hd).step_by(64) {
            let w = ((hd - d0) / 16).min(4);
            let tile: Tile512<E> = match (h, w) {
                (1, 1) => v_tile512::<E, 1, 1>,
                (1, 2) => v_tile512::<E, 1, 2>,
                (1, 3) => v_tile512::<E, 1, 3>,
                (1, _) => v_tile512::<E, 1, 4>,
                (2, 1) => v_tile512::<E, 2, 1>,
                (2, 2) => v_tile512::<E, 2, 2>,
                (2, 3) => v_tile512::<E, 2, 3>,
                (2, _) => v_tile512::<E, 2, 4>,
                (3, 1) => v_tile512::<E, 3, 1>,
                (3, 2) => v_tile512::<E, 3, 2>,
                (3, 3) => v_tile512::<E, 3, 3>,
                (3, _) => v_tile512::<E, 3, 4>,
                (_, 1) => v_tile512::<E, 4, 1>,
                (_, 2) => v_tile512::<E, 4, 2>,
                (_, 3) => v_tile512::<E, 4, 3>,
                (_, _) => v_tile512::<E, 4, 4>,
            };
            // SAFETY: AVX-512F is available (this function's target feature, its callers'
            // contract); the tile checks its bounds.
            unsafe { tile(rows, &probs[g0 * n..], &mut acc[g0 * hd + d0..], hd, d0) };
        }
    }
}

/// Scales row `g`'s scores, adds the bias, and replaces them with `exp(x - max)`; returns
/// (max, sum).
#[target_feature(enable = "avx512f")]
fn softmax_row512<S>(c: &Chunk<S>, g: usize, row: &mut [f32]) -> (f32, f32) {
    let n = row.len();
    let scale = _mm512_set1_ps(c.p.scale);
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    for t in (0..n).step_by(16) {
        let m = lanes((n - t).min(16));
        // SAFETY: masked lanes stay below n.
        let p = unsafe { row.as_mut_ptr().add(t) };
        let x = _mm512_mul_ps(unsafe { _mm512_maskz_loadu_ps(m, p) }, scale);
        unsafe { _mm512_mask_storeu_ps(p, m, x) };
        mx = _mm512_mask_max_ps(mx, m, mx, x);
    }
    if c.has_bias() {
        c.add_bias(g, row);
        mx = _mm512_set1_ps(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }
    let max = _mm512_reduce_max_ps(mx);
    let vmax = _mm512_set1_ps(max);
    let mut sum = _mm512_setzero_ps();
    for t in (0..n).step_by(16) {
        let m = lanes((n - t).min(16));
        // SAFETY: masked lanes stay below n.
        let p = unsafe { row.as_mut_ptr().add(t) };
        let e = exp512(_mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(m, p) }, vmax));
        unsafe { _mm512_mask_storeu_ps(p, m, e) };
        sum = _mm512_mask_add_ps(sum, m, sum, e);
    }
    (max, _mm512_reduce_add_ps(sum))
}

/// `out[h·hd + d] = Σ_t probs[h·n + t] · rows[t][d0 + d]` for `H` heads and `d < 16·W`: the
/// accumulators stay in registers while each row is read once for all `H` heads.
///
/// # Safety
/// Requires AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn v_tile512<E: Elem, const H: usize, const W: usize>(
    rows: &[&[E]],
    probs: &[f32],
    out: &mut [f32],
    hd: usize,
    d0: usize,
) {
    let n = rows.len();
    // What the raw reads and writes below rely on.
    assert!(probs.len() >= H * n && out.len() >= (H - 1) * hd + 16 * W);
    assert!(rows.iter().all(|r| r.len() >= d0 + 16 * W));
    let mut acc = [[_mm512_setzero_ps(); W]; H];
    for (t, r) in rows.iter().enumerate() {
        let r = r.as_ptr().add(d0);
        let mut v = [_mm512_setzero_ps(); W];
        for (l, vl) in v.iter_mut().enumerate() {
            // SAFETY: d0 + 16·W <= row length (asserted above).
            *vl = E::load16(r.add(16 * l));
        }
        for (h, ah) in acc.iter_mut().enumerate() {
            // SAFETY: h·n + t < H·n <= probs.len() (asserted above).
            let w = _mm512_set1_ps(*probs.get_unchecked(h * n + t));
            for (a, vl) in ah.iter_mut().zip(&v) {
                *a = _mm512_fmadd_ps(w, *vl, *a);
            }
        }
    }
    for (h, ah) in acc.iter().enumerate() {
        for (l, a) in ah.iter().enumerate() {
            // SAFETY: h·hd + 16·l + 16 <= (H - 1)·hd + 16·W <= out.len() (asserted above).
            _mm512_storeu_ps(out.as_mut_ptr().add(h * hd + 16 * l), *a);
        }
    }
}
