//! The AVX2+FMA decode kernel, for CPUs without AVX-512 (see `decode.rs` for the task split and
//! the partials it fills; `decode_avx512.rs` for the faster kernel), head_dim a multiple of 8:
//! scores for four keys at a time per head (four FMA chains, one horizontal reduction for all
//! four), scalar softmax, and the V sum of each head in registers, 64 dims at a time. The
//! portable `decode::decode_chunk` is its reference in tests.

use std::arch::x86_64::*;

use super::decode::{decode_chunk, fetch_rows, Buffers, Chunk, KvRows, DECODE_CHUNK};
use super::vec::dot_portable;

/// `v_slab256::<W>` for the W of a slab (picked at run time).
type Slab256 = unsafe fn(&[&[f32]], &[f32], &mut [f32], usize);

/// AVX2+FMA chunk kernel, same contract as `decode::decode_chunk`: scores for four keys at a
/// time per head (four FMA chains, one horizontal reduction for all four), scalar softmax, and
/// the V sum of each head in registers, 64 dims at a time.
///
/// # Safety
/// Requires AVX2, FMA and `head_dim % 8 == 0`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn decode_chunk_avx2<S: KvRows>(c: &Chunk<S>, b: &mut Buffers, part: &mut [f32]) {
    let (group, hd, n) = (c.group(), c.p.head_dim, c.c1 - c.c0);
    if !hd.is_multiple_of(8) {
        return decode_chunk(c, b, part);
    }
    assert!(n <= DECODE_CHUNK && part.len() == group * (hd + 2));
    let (scratch, scores) = b.split(group * n);
    {
        let mut rows = [&[][..]; DECODE_CHUNK];
        fetch_rows(c, false, &mut scratch[0], &mut rows[..n]);
        for g in 0..group {
            let q = c.q_row(g).as_ptr();
            let out = &mut scores[g * n..(g + 1) * n];
            let mut t = 0;
            while t + 4 <= n {
                let r: [*const f32; 4] = std::array::from_fn(|u| rows[t + u].as_ptr());
                let (mut a0, mut a1, mut a2, mut a3) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                for d in (0..hd).step_by(8) {
                    // SAFETY: q_row and every row hold hd values (fetch_rows checked).
                    let qv = _mm256_loadu_ps(q.add(d));
                    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[0].add(d)), a0);
                    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[1].add(d)), a1);
                    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[2].add(d)), a2);
                    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r[3].add(d)), a3);
                }
                let s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                let sums = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                // SAFETY: t + 4 <= n = out.len().
                _mm_storeu_ps(out.as_mut_ptr().add(t), sums);
                t += 4;
            }
            for (o, r) in out[t..].iter_mut().zip(&rows[t..n]) {
                *o = dot_portable(c.q_row(g), r);
            }
        }
    }
    let (stats, acc) = part.split_at_mut(2 * group);
    c.softmax_parts(scores, stats);
    let mut rows = [&[][..]; DECODE_CHUNK];
    fetch_rows(c, true, &mut scratch[1], &mut rows[..n]);
    for g in 0..group {
        for d0 in (0..hd).step_by(64) {
            let tile: Slab256 = match (hd - d0) / 8 {
                1 => v_slab256::<1>,
                2 => v_slab256::<2>,
                3 => v_slab256::<3>,
                4 => v_slab256::<4>,
                5 => v_slab256::<5>,
                6 => v_slab256::<6>,
                7 => v_slab256::<7>,
                _ => v_slab256::<8>,
            };
            // SAFETY: AVX2 and FMA are available (this function's contract).
            tile(
                &rows[..n],
                &scores[g * n..(g + 1) * n],
                &mut acc[g * hd + d0..],
                d0,
            );
        }
    }
}

/// `out[d] = Σ_t probs[t] · rows[t][d0 + d]` for `d < 8·W`, the accumulators in registers.
///
/// # Safety
/// Requires AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn v_slab256<const W: usize>(rows: &[&[f32]], probs: &[f32], out: &mut [f32], d0: usize) {
    // What the raw reads and writes below rely on.
    assert!(probs.len() >= rows.len() && out.len() >= 8 * W);
    assert!(rows.iter().all(|r| r.len() >= d0 + 8 * W));
    let mut acc = [_mm256_setzero_ps(); W];
    for (r, &p) in rows.iter().zip(probs) {
        let (r, w) = (r.as_ptr().add(d0), _mm256_set1_ps(p));
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: d0 + 8·W <= row length (asserted above).
            *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8 * l)), *a);
        }
    }
    for (l, a) in acc.iter().enumerate() {
        // SAFETY: 8·W <= out.len() (asserted above).
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * l), *a);
    }
}
