//! Unit tests of the decode kernels (private to decode.rs, decode_avx2.rs, decode_avx512.rs): every kernel this CPU
//! runs (portable, AVX2, AVX-512) against `reference_attention` (f64) and against the portable
//! one, over contiguous and paged (f32, f16, int8) sources, odd key counts, chunks and windows
//! that start inside a block, ALiBi and relative bias; the vectorised exp against f64.
//! Kernels the CPU lacks are skipped (`Kernel::available`).

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use super::*;
use crate::cpu::attention::{reference_attention, RelativeBias};
use crate::cpu::paged_attention::{KvCacheDtype, PagedLayerKv, PagedRows};

fn kernels(head_dim: usize) -> Vec<Kernel> {
    let all = [
        Kernel::Portable,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512,
    ];
    let ks: Vec<Kernel> = all.into_iter().filter(|k| k.available(head_dim)).collect();
    if ks.len() < all.len() {
        eprintln!("head_dim {head_dim}: testing {ks:?} only (others unavailable here)");
    }
    ks
}

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Head layouts: SmolLM2's (9, 3, 64), head tiles of the AVX-512 V sum with leftovers (group 5
/// and 8), head_dims that take 1–4 and 4+1 vectors of 16, and ones only AVX2 (24) or only the
/// portable kernel (12) take.
const LAYOUTS: [(usize, usize, usize); 8] = [
    (9, 3, 64),
    (8, 1, 32),
    (4, 1, 128),
    (10, 2, 48),
    (5, 5, 16),
    (10, 2, 80),
    (6, 2, 24),
    (4, 2, 12),
];

fn params<'a>(
    (nh, nkv, hd): (usize, usize, usize),
    window: Option<usize>,
    alibi: Option<&'a [f32]>,
    rel_bias: Option<RelativeBias<'a>>,
) -> AttnParams<'a> {
    AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        causal: rel_bias.is_none(),
        window,
        alibi_slopes: alibi,
        rel_bias,
    }
}

/// Each kernel's output against the reference and the portable kernel's, through `src`.
fn check<S: KvRows>(
    what: &str,
    q: &[f32],
    src: &S,
    k: &[f32],
    v: &[f32],
    q_start: usize,
    p: &AttnParams,
) {
    let n_kv = k.len() / (p.n_kv_heads * p.head_dim);
    let want = reference_attention(q, k, v, q_start, p);
    let mut portable = vec![f32::NAN; q.len()];
    decode_with(Kernel::Portable, q, src, n_kv, q_start, p, &mut portable);
    for kernel in kernels(p.head_dim) {
        let mut out = vec![f32::NAN; q.len()];
        decode_with(kernel, q, src, n_kv, q_start, p, &mut out);
        let (e_ref, e_port) = (max_abs_err(&out, &want), max_abs_err(&out, &portable));
        assert!(
            e_ref < 2e-5 && e_port < 1e-5,
            "{what} {kernel:?} n_kv {n_kv}: vs reference {e_ref}, vs portable {e_port}"
        );
    }
}

#[test]
fn kernels_match_reference_contiguous() {
    let mut rng = StdRng::seed_from_u64(11);
    for layout in LAYOUTS {
        let (nh, nkv, hd) = layout;
        let slopes: Vec<f32> = (0..nh).map(|h| 0.5f32.powi(h as i32 + 1)).collect();
        for n_kv in [1usize, 5, 17, 37, 128, 129, 300] {
            for (n_q, window, alibi) in [(1, None, false), (3, Some(50), false), (1, None, true)] {
                let n_q = n_q.min(n_kv);
                let k = rand_vec(&mut rng, n_kv * nkv * hd);
                let v = rand_vec(&mut rng, n_kv * nkv * hd);
                let q = rand_vec(&mut rng, n_q * nh * hd);
                let p = params(layout, window, alibi.then_some(&slopes[..]), None);
                let src = Contiguous {
                    k: &k,
                    v: &v,
                    kv_stride: nkv * hd,
                    head_dim: hd,
                };
                let what = format!("contiguous {layout:?} n_q {n_q} window {window:?}");
                check(&what, &q, &src, &k, &v, n_kv - n_q, &p);
            }
        }
    }
}

/// Paged sources: block sizes that do and do not divide the chunk size (runs split across
/// blocks, chunks and windows starting mid-block), f32 read in place and f16/int8 dequantized
/// into the scratch; the reference runs on the rows as stored.
#[test]
fn kernels_match_reference_paged() {
    let mut rng = StdRng::seed_from_u64(12);
    for layout in [LAYOUTS[0], LAYOUTS[3], LAYOUTS[6]] {
        let (nh, nkv, hd) = layout;
        let slopes: Vec<f32> = (0..nh).map(|h| 0.3f32.powi(h as i32 + 1)).collect();
        for dtype in [KvCacheDtype::F32, KvCacheDtype::F16, KvCacheDtype::Int8] {
            for bs in [7usize, 16] {
                for (n_kv, window, alibi) in
                    [(300, None, true), (261, Some(140), false), (9, None, false)]
                {
                    let (k, v) = (
                        rand_vec(&mut rng, n_kv * nkv * hd),
                        rand_vec(&mut rng, n_kv * nkv * hd),
                    );
                    let q = rand_vec(&mut rng, nh * hd);
                    let n_blocks = n_kv.div_ceil(bs) + 2;
                    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
                    ids.shuffle(&mut rng);
                    let table = &ids[..n_kv.div_ceil(bs)];
                    let mut pool = PagedLayerKv::new(dtype, n_blocks, bs, nkv, hd);
                    pool.write(table, 0, &k, &v);
                    let (ks, vs) = pool.gather(table, 0, n_kv);
                    let p = params(layout, window, alibi.then_some(&slopes[..]), None);
                    let src = PagedRows {
                        layer: &pool,
                        table,
                    };
                    let what = format!("paged {dtype:?} bs {bs} {layout:?} window {window:?}");
                    check(&what, &q, &src, &ks, &vs, n_kv - 1, &p);
                }
            }
        }
    }
}

/// T5's relative bias (bidirectional: the query sees keys on both sides).
#[test]
fn kernels_match_reference_relative_bias() {
    let mut rng = StdRng::seed_from_u64(13);
    for layout in [LAYOUTS[0], LAYOUTS[5]] {
        let (nh, nkv, hd) = layout;
        let n_kv = 150;
        let n_rel = 2 * n_kv + 1;
        let values = rand_vec(&mut rng, nh * n_rel);
        let rb = RelativeBias {
            values: &values,
            min_rel: -(n_kv as isize),
            n_rel,
        };
        let (k, v) = (
            rand_vec(&mut rng, n_kv * nkv * hd),
            rand_vec(&mut rng, n_kv * nkv * hd),
        );
        let q = rand_vec(&mut rng, 2 * nh * hd);
        let p = params(layout, None, None, Some(rb));
        let src = Contiguous {
            k: &k,
            v: &v,
            kv_stride: nkv * hd,
            head_dim: hd,
        };
        check("relative bias", &q, &src, &k, &v, 40, &p);
    }
}

/// The split into tasks depends on the key count only: the same bits on one thread or three
/// (this size takes the parallel path).
#[test]
fn decode_same_bits_on_any_thread_count() {
    let mut rng = StdRng::seed_from_u64(14);
    let (nh, nkv, hd, n_kv) = (9, 3, 64, 700);
    let (k, v) = (
        rand_vec(&mut rng, n_kv * nkv * hd),
        rand_vec(&mut rng, n_kv * nkv * hd),
    );
    let q = rand_vec(&mut rng, nh * hd);
    let p = params((nh, nkv, hd), None, None, None);
    let src = Contiguous {
        k: &k,
        v: &v,
        kv_stride: nkv * hd,
        head_dim: hd,
    };
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let mut out = vec![0.0f32; q.len()];
        pool.install(|| decode(&q, &src, n_kv, n_kv - 1, &p, &mut out));
        out
    };
    let one = on(1);
    assert!(one
        .iter()
        .zip(&on(3))
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn exp512_matches_f64_exp() {
    use super::super::decode_avx512::exp512;
    use std::arch::x86_64::*;
    if !crate::cpu::vec::has_avx512() {
        eprintln!("no AVX-512 here: exp512 not tested");
        return;
    }
    let exp16 = |x: &[f32; 16]| -> [f32; 16] {
        let mut out = [0.0f32; 16];
        // SAFETY: AVX-512F is available (checked above); both arrays hold 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(x.as_ptr()))) };
        out
    };
    // The range softmax meets (x - max <= 0), and some way above it.
    let xs: Vec<f32> = (0..=2_000_000)
        .map(|i| -110.0 + i as f32 * (198.0 / 2_000_000.0))
        .collect();
    let mut worst = 0f64;
    for block in xs.chunks_exact(16) {
        let x: [f32; 16] = block.try_into().expect("16 values");
        for (&xi, yi) in x.iter().zip(exp16(&x)) {
            let want = (xi as f64).exp();
            if xi < -104.0 {
                assert_eq!(yi, 0.0, "exp({xi})");
            } else if want < f32::MIN_POSITIVE as f64 {
                // Subnormal results: within one step of the subnormal grid.
                assert!(
                    (yi as f64 - want).abs() <= 1.5e-45,
                    "exp({xi}) = {yi}, want {want}"
                );
            } else {
                worst = worst.max((yi as f64 - want).abs() / want);
            }
        }
    }
    assert!(worst < 2.5e-7, "max relative error {worst}");
    let special = exp16(&[
        f32::NEG_INFINITY,
        -1e30,
        -200.0,
        0.0,
        -0.0,
        1.0,
        -1.0,
        88.0,
        -87.0,
        0.5,
        -0.5,
        -10.0,
        -20.0,
        -40.0,
        -80.0,
        -103.0,
    ]);
    assert_eq!(&special[..5], &[0.0, 0.0, 0.0, 1.0, 1.0]);
    assert!(
        special[15] > 0.0 && special[15] < 1.5e-44,
        "{}",
        special[15]
    );
}
