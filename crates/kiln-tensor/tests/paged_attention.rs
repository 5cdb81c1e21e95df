//! Paged attention against `reference_attention` on the same rows stored contiguously: block
//! tables in random order, partial last blocks, GQA, windows with released (NO_BLOCK) blocks,
//! ALiBi, decode and prefill/chunked-prefill query counts, f32 and int8 storage.

use kiln_tensor::cpu::attention::{attention, reference_attention, AttnParams};
use kiln_tensor::cpu::paged_attention::{KvCacheDtype, PagedLayerKv, NO_BLOCK};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

struct Case {
    nh: usize,
    nkv: usize,
    hd: usize,
    n_kv: usize,
    n_q: usize,
    bs: usize,
    window: Option<usize>,
    alibi: bool,
    causal: bool,
}

/// Stores the rows in a pool under a shuffled table, releases blocks before every query's
/// window, and returns (paged output, reference output on the rows as stored).
fn run(rng: &mut StdRng, c: &Case, dtype: KvCacheDtype) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let row = c.nkv * c.hd;
    let k = rand_vec(rng, c.n_kv * row);
    let v = rand_vec(rng, c.n_kv * row);
    let q = rand_vec(rng, c.n_q * c.nh * c.hd);
    let n_blocks = c.n_kv.div_ceil(c.bs) + 3;
    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
    ids.shuffle(rng);
    let mut table = ids[..c.n_kv.div_ceil(c.bs)].to_vec();
    let mut pool = PagedLayerKv::new(dtype, n_blocks, c.bs, c.nkv, c.hd);
    // Write in two pieces, as a prefill then a chunk would.
    let split = c.n_kv / 3;
    pool.write(&table, 0, &k[..split * row], &v[..split * row]);
    pool.write(&table, split, &k[split * row..], &v[split * row..]);
    let slopes: Vec<f32> = (0..c.nh).map(|h| 0.5f32.powi(h as i32 + 1)).collect();
    let p = AttnParams {
        n_heads: c.nh,
        n_kv_heads: c.nkv,
        head_dim: c.hd,
        scale: 1.0 / (c.hd as f32).sqrt(),
        causal: c.causal,
        window: c.window,
        alibi_slopes: c.alibi.then_some(&slopes[..]),
    };
    let q_start = c.n_kv - c.n_q;
    // What the pool holds (dequantized for int8), gathered before blocks are released.
    let (ks, vs) = pool.gather(&table, 0, c.n_kv);
    if let Some(w) = c.window {
        let released = (q_start + 1).saturating_sub(w) / c.bs;
        table[..released].fill(NO_BLOCK);
    }
    let mut out = vec![f32::NAN; q.len()];
    pool.attend(&q, &table, c.n_kv, q_start, &p, &mut out);
    let stored = reference_attention(&q, &ks, &vs, q_start, &p);
    let exact = reference_attention(&q, &k, &v, q_start, &p);
    (out, stored, exact)
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for &(nh, nkv, hd) in &[(9, 3, 64), (4, 4, 24), (6, 2, 12)] {
        for &(n_kv, n_q) in &[(1, 1), (37, 1), (300, 1), (301, 3), (90, 90), (200, 70)] {
            for &bs in &[4, 16] {
                for &(window, alibi) in &[(None, false), (Some(50), false), (None, true)] {
                    v.push(Case {
                        nh,
                        nkv,
                        hd,
                        n_kv,
                        n_q,
                        bs,
                        window,
                        alibi,
                        causal: true,
                    });
                }
            }
        }
    }
    v.push(Case {
        nh: 4,
        nkv: 2,
        hd: 16,
        n_kv: 45,
        n_q: 2,
        bs: 16,
        window: None,
        alibi: false,
        causal: false,
    });
    v
}

#[test]
fn paged_f32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for c in cases() {
        let (out, _, exact) = run(&mut rng, &c, KvCacheDtype::F32);
        let err = max_abs_err(&out, &exact);
        assert!(
            err < 2e-5,
            "nh {} nkv {} hd {} n_kv {} n_q {} bs {} window {:?} alibi {}: {err}",
            c.nh,
            c.nkv,
            c.hd,
            c.n_kv,
            c.n_q,
            c.bs,
            c.window,
            c.alibi
        );
    }
}

/// Int8: exact attention over the dequantized rows (the kernel adds no error of its own), and
/// within 0.02 of f32 attention: each element is off by at most absmax/254 ≈ 0.4% of its row's
/// range, which moves scores by at most |q|·|Δk| and outputs by the value error plus the
/// probability shift. Measured max on this data: 0.0047.
#[test]
fn paged_int8_within_bound() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut worst = 0f32;
    for c in cases() {
        let (out, stored, exact) = run(&mut rng, &c, KvCacheDtype::Int8);
        assert!(max_abs_err(&out, &stored) < 2e-5, "int8 kernel vs its rows");
        worst = worst.max(max_abs_err(&out, &exact));
    }
    assert!(worst < 0.02, "int8 vs f32: {worst}");
}

/// F16: exact over the stored rows, and within 2e-3 of f32 (half keeps 11 significant bits:
/// elements in [-1, 1] are off by at most 2⁻¹², which moves the outputs by about as much).
#[test]
fn paged_f16_within_bound() {
    let mut rng = StdRng::seed_from_u64(10);
    let mut worst = 0f32;
    for c in cases().iter().step_by(3) {
        let (out, stored, exact) = run(&mut rng, c, KvCacheDtype::F16);
        assert!(max_abs_err(&out, &stored) < 2e-5, "f16 kernel vs its rows");
        worst = worst.max(max_abs_err(&out, &exact));
    }
    assert!(worst < 2e-3, "f16 vs f32: {worst}");
}

/// The contiguous path still matches the reference after the decode kernels went through
/// `KvRows` (the paged test covers the paged source; this one the contiguous one).
#[test]
fn contiguous_decode_matches_reference() {
    let mut rng = StdRng::seed_from_u64(9);
    for c in cases() {
        let row = c.nkv * c.hd;
        let k = rand_vec(&mut rng, c.n_kv * row);
        let v = rand_vec(&mut rng, c.n_kv * row);
        let q = rand_vec(&mut rng, c.n_q * c.nh * c.hd);
        let p = AttnParams {
            n_heads: c.nh,
            n_kv_heads: c.nkv,
            head_dim: c.hd,
            scale: 0.2,
            causal: c.causal,
            window: c.window,
            alibi_slopes: None,
        };
        let mut out = vec![0.0; q.len()];
        attention(&q, &k, &v, c.n_kv - c.n_q, &p, &mut out);
        let expect = reference_attention(&q, &k, &v, c.n_kv - c.n_q, &p);
        assert!(max_abs_err(&out, &expect) < 2e-5);
    }
}

#[test]
fn kv_cache_dtype_parses() {
    for (s, d) in [
        ("auto", KvCacheDtype::F32),
        ("f32", KvCacheDtype::F32),
        ("float32", KvCacheDtype::F32),
        ("INT8", KvCacheDtype::Int8),
        ("float16", KvCacheDtype::F16),
    ] {
        assert_eq!(s.parse::<KvCacheDtype>().unwrap(), d);
    }
    assert!("fp8".parse::<KvCacheDtype>().is_err());
    assert_eq!(
        PagedLayerKv::bytes_per_block(KvCacheDtype::F32, 16, 3, 64),
        2 * 16 * 3 * 64 * 4
    );
    assert_eq!(
        PagedLayerKv::bytes_per_block(KvCacheDtype::Int8, 16, 3, 64),
        2 * 16 * 3 * 68
    );
}
