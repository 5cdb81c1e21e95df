//! Unit tests of the decode chunk kernels (private to attention.rs).

use super::*;

#[test]
fn avx2_decode_chunk_matches_portable() {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::vec::has_avx2_fma() {
        let (nh, nkv, hd, n_kv) = (6usize, 2usize, 24usize, 37usize);
        let f = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let q: Vec<f32> = (0..nh * hd).map(f).collect();
        let k: Vec<f32> = (0..n_kv * nkv * hd).map(|i| f(i + 3)).collect();
        let v: Vec<f32> = (0..n_kv * nkv * hd).map(|i| f(i + 11)).collect();
        let slopes = [0.1f32; 6];
        let p = AttnParams {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: 0.3,
            causal: true,
            window: None,
            alibi_slopes: Some(&slopes),
        };
        let src = Contiguous {
            k: &k,
            v: &v,
            kv_stride: nkv * hd,
            head_dim: hd,
        };
        let c = Chunk {
            q: &q,
            src: &src,
            q_start: n_kv - 1,
            p: &p,
            i: 0,
            kh: 1,
            c0: 3,
            c1: 36,
        };
        let a = decode_chunk(&c, &mut Vec::new());
        // SAFETY: AVX2 and FMA are available (checked above).
        let b = unsafe { decode_chunk_avx2(&c, &mut Vec::new()) };
        for (x, y) in a
            .acc
            .iter()
            .zip(&b.acc)
            .chain(a.sum.iter().zip(&b.sum))
            .chain(a.max.iter().zip(&b.max))
        {
            assert!((x - y).abs() < 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}
