//! The AVX2+FMA decode kernel, for CPUs without AVX-512 (see `decode.rs` for the task split and
//! the partials it fills; `decode_avx512.rs` for the faster kernel), head_dim a multiple of 8:
//! scores for four keys at a time per head (four FMA chains, one horizontal reduction for all
//! four), the softmax's exp as a polynomial (`exp256`, as the AVX-512 kernel's `exp512`), and
//! the V sum of each head in registers, 64 dims at a time. The portable `decode::decode_chunk`
//! is its reference in tests.

use std::arch::x86_64::*;

use super::activation::{EXP_POLY, LN2_HI, LN2_LO};

use super::decode::{decode_chunk, fetch_rows, Buffers, Chunk, KvRows, DECODE_CHUNK};
use super::vec::dot_portable;

/// `v_slab256::<W>` for the W of a slab (picked at run time).
type Slab256 = unsafe fn(&[&[f32]], &[f32], &mut [f32], usize);

/// AVX2+FMA chunk kernel, same contract as `decode::decode_chunk`: scores for four keys at a
/// time per head (four FMA chains, one horizontal reduction for all four), vectorised softmax,
/// and the V sum of each head in registers, 64 dims at a time.
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
    for g in 0..group {
        let row = &mut scores[g * n..(g + 1) * n];
        row.iter_mut().for_each(|x| *x *= c.p.scale);
        if c.has_bias() {
            c.add_bias(g, row);
        }
        let (m, s) = exp_shifted256(row);
        stats[g] = m;
        stats[group + g] = s;
    }
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

/// `exp(x)` per lane, Cephes' `expf` as `decode_avx512::exp512` but with 2ⁿ built in the
/// exponent bits (AVX2 has no `scalef`): exact to ~2 ulp for -87.3 <= x <= 88, 0 below (where
/// the result would be subnormal, < 1.2e-38: nothing a softmax sum notices) and at -inf;
/// x > 88 is clamped to 88.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn exp256(x: __m256) -> __m256 {
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-87.33));
    let x = _mm256_max_ps(
        _mm256_min_ps(x, _mm256_set1_ps(88.0)),
        _mm256_set1_ps(-87.33),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut y = _mm256_set1_ps(EXP_POLY[0]);
    for coef in EXP_POLY[1..].iter().copied() {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(coef));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2ⁿ for -126 <= n <= 127: the biased exponent n + 127 in bits 23..31.
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_and_ps(keep, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2)))
}

/// Replaces `row` by `exp(x - max)`; returns (max, sum). Eight lanes at a time, the tail
/// through a padded copy (lanes past the end are -inf, so exp gives 0).
#[target_feature(enable = "avx2,fma")]
fn exp_shifted256(row: &mut [f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let vmax = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for piece in row.chunks_mut(8) {
        let mut lanes = [f32::NEG_INFINITY; 8];
        lanes[..piece.len()].copy_from_slice(piece);
        // SAFETY: `lanes` holds 8 floats.
        let x = unsafe { _mm256_loadu_ps(lanes.as_ptr()) };
        let e = exp256(_mm256_sub_ps(x, vmax));
        sum = _mm256_add_ps(sum, e);
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), e) };
        piece.copy_from_slice(&lanes[..piece.len()]);
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    (max, _mm_cvtss_f32(s))
}
