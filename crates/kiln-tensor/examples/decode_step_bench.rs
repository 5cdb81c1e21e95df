//! Decode attention of a serving step: 64 sequences, one query each, SmolLM2-135M heads (9 query
//! heads, 3 kv heads, head_dim 64), contexts 160 and 320, paged pools (f32, f16, int8; block
//! size 16, blocks interleaved over the sequences as a pool that grew them together hands them
//! out) and the contiguous cache. Sequences run in parallel with rayon as `PagedKv::append_attend_all` does.
//!
//! Each call runs `BENCH_LAYERS` (default 30) layers, each with its own pool, so that the cache
//! does not sit in the CPU caches between layers any more than it does in a real step (SmolLM2
//! has 30 layers; at 320 keys the f32 cache of one step is ~0.9 GB). Reported: the minimum over
//! rounds of the time per layer (the machine is shared: the min is the estimate least disturbed
//! by other load), the median, to show the spread, and the process's CPU time (user + system,
//! from /proc/self/stat, Linux only) per layer over all rounds.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo run --release -p kiln-tensor --example decode_step_bench`.
//! `BENCH_ROUNDS`, `BENCH_LAYERS`, `BENCH_ONLY` (a variant name) shrink the run.

use std::time::Instant;

use kiln_tensor::cpu::attention::{attention, AttnParams};
use kiln_tensor::cpu::paged_attention::{KvCacheDtype, PagedLayerKv};
use rayon::prelude::*;

const N_SEQS: usize = 64;

type Variant<'a> = (String, Box<dyn FnMut() + 'a>);

fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat: utime and stime in clock ticks (100 per second).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            let f: Vec<f64> = after
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum::<f64>())
        })
        .map_or(0.0, |t| t / 100.0)
}

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let (nh, nkv, hd, bs) = (9usize, 3usize, 64usize, 16usize);
    let row = nkv * hd;
    let (rounds, n_layers) = (env("BENCH_ROUNDS", 15), env("BENCH_LAYERS", 30));
    let only = std::env::var("BENCH_ONLY").ok();
    let f = |i: usize| ((i.wrapping_mul(2654435761)) % 2001) as f32 / 1000.0 - 1.0;
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 0.125,
        causal: true,
        window: None,
        alibi_slopes: None,
        rel_bias: None,
    };
    for ctx in [160usize, 320] {
        let per_seq = ctx.div_ceil(bs);
        // Sequence s's b-th block: the pool handed blocks out round-robin as all grew together.
        let tables: Vec<Vec<u32>> = (0..N_SEQS)
            .map(|s| (0..per_seq).map(|b| (b * N_SEQS + s) as u32).collect())
            .collect();
        let q: Vec<f32> = (0..N_SEQS * nh * hd).map(|i| f(i + 3)).collect();
        let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
        let mut pools: Vec<(&str, KvCacheDtype, Vec<PagedLayerKv>)> = [
            ("paged f32", KvCacheDtype::F32),
            ("paged f16", KvCacheDtype::F16),
            ("paged int8", KvCacheDtype::Int8),
        ]
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, dtype)| (name, dtype, Vec::new()))
        .collect();
        let mut contiguous = Vec::new();
        for l in 0..n_layers {
            let mut layer: Vec<PagedLayerKv> = pools
                .iter()
                .map(|&(_, dtype, _)| PagedLayerKv::new(dtype, per_seq * N_SEQS, bs, nkv, hd))
                .collect();
            let mut seqs = Vec::new();
            for (s, table) in tables.iter().enumerate() {
                let base = (l * N_SEQS + s) * ctx * row;
                let k: Vec<f32> = (0..ctx * row).map(|i| f(base + i)).collect();
                let v: Vec<f32> = (0..ctx * row).map(|i| f(base + i + 7)).collect();
                for pool in &mut layer {
                    pool.write(table, 0, &k, &v);
                }
                if wanted("contiguous") {
                    seqs.push((k, v));
                }
            }
            for ((_, _, layers), pool) in pools.iter_mut().zip(layer) {
                layers.push(pool);
            }
            contiguous.push(seqs);
        }
        let (q, p, tables, contiguous) = (&q, &p, &tables, &contiguous);
        let mut variants: Vec<Variant> = Vec::new();
        for (name, _, layers) in &pools {
            let mut out = vec![0.0f32; N_SEQS * nh * hd];
            variants.push((
                name.to_string(),
                Box::new(move || {
                    for pool in layers {
                        out.par_chunks_mut(nh * hd).enumerate().for_each(|(s, o)| {
                            let qs = &q[s * nh * hd..][..nh * hd];
                            pool.attend(qs, &tables[s], ctx, ctx - 1, p, o);
                        });
                    }
                }),
            ));
        }
        if wanted("contiguous") {
            let mut out = vec![0.0f32; N_SEQS * nh * hd];
            variants.push((
                "contiguous".to_string(),
                Box::new(move || {
                    for seqs in contiguous {
                        out.par_chunks_mut(nh * hd)
                            .zip(seqs.par_iter())
                            .enumerate()
                            .for_each(|(s, (o, (k, v)))| {
                                let qs = &q[s * nh * hd..][..nh * hd];
                                attention(qs, k, v, ctx - 1, p, o);
                            });
                    }
                }),
            ));
        }
        let mut times = vec![Vec::new(); variants.len()];
        let mut cpu = vec![0.0; variants.len()];
        // Round 0 warms the thread pool and the page tables; interleaving the variants round by
        // round lets background load hit all of them alike.
        for round in 0..=rounds {
            for (i, (_, run)) in variants.iter_mut().enumerate() {
                let (t, c) = (Instant::now(), cpu_seconds());
                run();
                if round > 0 {
                    times[i].push(t.elapsed().as_secs_f64() / n_layers as f64);
                    cpu[i] += cpu_seconds() - c;
                }
            }
        }
        for (((name, _), t), c) in variants.iter().zip(&mut times).zip(&cpu) {
            t.sort_by(f64::total_cmp);
            println!(
                "ctx {ctx:4}  {name:<11} {N_SEQS} seqs, per layer: min {:7.1} us  median {:7.1} us  \
                 cpu {:7.1} us",
                t[0] * 1e6,
                t[t.len() / 2] * 1e6,
                c / (rounds * n_layers) as f64 * 1e6
            );
        }
    }
}
