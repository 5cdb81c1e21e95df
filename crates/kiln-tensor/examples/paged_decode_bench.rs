//! Decode attention cost: contiguous cache vs paged pool (f32, f16, int8), SmolLM2-135M heads
//! (9 query heads, 3 kv heads, head_dim 64), one query at contexts 512 and 1024, block size 16,
//! block table shuffled over the pool.
//!
//! Run: `cargo run --release -p kiln-tensor --example paged_decode_bench` (set
//! `RAYON_NUM_THREADS=1` for the single-thread cost). Reports, per variant, the minimum over
//! rounds of the mean time per call (the machine is shared and noisy: the min is the estimate
//! least disturbed by other load) and user CPU time per call over all rounds (from
//! /proc/self/stat, Linux only; 0 elsewhere). Instruction counts, which load does not disturb:
//! `BENCH_ROUNDS=1 BENCH_CALLS=20 BENCH_ONLY="paged f32" valgrind --tool=callgrind ...`.

use std::time::Instant;

use kiln_tensor::cpu::attention::{attention, AttnParams};
use kiln_tensor::cpu::paged_attention::{KvCacheDtype, PagedLayerKv};

fn user_cpu_seconds() -> f64 {
    // Field 14 of /proc/self/stat is utime in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            after.split_whitespace().nth(11)?.parse::<f64>().ok()
        })
        .map_or(0.0, |t| t / 100.0)
}

/// Runs every variant `calls` times per round, interleaved round by round so that background
/// load hits all of them alike; prints the min over rounds and the mean user CPU per call.
type Variant<'a> = (&'a str, Box<dyn FnMut() + 'a>);

fn measure(ctx: usize, calls: usize, rounds: usize, variants: &mut [Variant]) {
    let mut best = vec![f64::INFINITY; variants.len()];
    let mut cpu = vec![0.0f64; variants.len()];
    for round in 0..=rounds {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            let (t, c) = (Instant::now(), user_cpu_seconds());
            for _ in 0..calls {
                f();
            }
            // Round 0 warms caches and the thread pool.
            if round > 0 {
                best[i] = best[i].min(t.elapsed().as_secs_f64() / calls as f64);
                cpu[i] += user_cpu_seconds() - c;
            }
        }
    }
    for (i, (name, _)) in variants.iter().enumerate() {
        println!(
            "ctx {ctx:5}  {name:<11} min wall {:7.2} us/call   user cpu {:7.2} us/call",
            best[i] * 1e6,
            cpu[i] / (calls * rounds) as f64 * 1e6
        );
    }
}

fn main() {
    let (nh, nkv, hd, bs) = (9usize, 3usize, 64usize, 16usize);
    let row = nkv * hd;
    let f = |i: usize| ((i.wrapping_mul(2654435761)) % 2001) as f32 / 1000.0 - 1.0;
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 0.125,
        causal: true,
        window: None,
        alibi_slopes: None,
    };
    // BENCH_CALLS / BENCH_ROUNDS / BENCH_ONLY (a variant name) shrink the run, e.g. for
    // counting instructions under `valgrind --tool=callgrind`.
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (calls, rounds) = (env("BENCH_CALLS", 200), env("BENCH_ROUNDS", 40));
    let only = std::env::var("BENCH_ONLY").ok();
    for ctx in [512usize, 1024] {
        let k: Vec<f32> = (0..ctx * row).map(f).collect();
        let v: Vec<f32> = (0..ctx * row).map(|i| f(i + 7)).collect();
        let q: Vec<f32> = (0..nh * hd).map(|i| f(i + 3)).collect();
        let n_blocks = ctx.div_ceil(bs) * 2;
        // A scattered table: every other block of the pool, in a scrambled order.
        let table: Vec<u32> = (0..ctx.div_ceil(bs) as u32)
            .map(|i| (i * 37 % ctx.div_ceil(bs) as u32) * 2 + 1)
            .collect();
        let pools: Vec<PagedLayerKv> = [KvCacheDtype::F32, KvCacheDtype::Int8, KvCacheDtype::F16]
            .into_iter()
            .map(|dtype| {
                let mut pool = PagedLayerKv::new(dtype, n_blocks, bs, nkv, hd);
                pool.write(&table, 0, &k, &v);
                pool
            })
            .collect();
        // The same rows in blocks 0, 1, 2, ... of a pool of exactly their size: the kernel's
        // cost apart from where the blocks lie.
        let in_order: Vec<u32> = (0..ctx.div_ceil(bs) as u32).collect();
        let mut ordered = PagedLayerKv::new(KvCacheDtype::F32, ctx.div_ceil(bs), bs, nkv, hd);
        ordered.write(&in_order, 0, &k, &v);
        let (o1, o2, o3, o4, o5) = (
            &mut vec![0.0f32; nh * hd],
            &mut vec![0.0f32; nh * hd],
            &mut vec![0.0f32; nh * hd],
            &mut vec![0.0f32; nh * hd],
            &mut vec![0.0f32; nh * hd],
        );
        let (k, v, q, p, table) = (&k, &v, &q, &p, &table);
        let mut variants: Vec<Variant> = vec![
            (
                "contiguous",
                Box::new(move || attention(q, k, v, ctx - 1, p, o1)),
            ),
            (
                "paged f32",
                Box::new(|| pools[0].attend(q, table, ctx, ctx - 1, p, o2)),
            ),
            (
                "paged seq",
                Box::new(|| ordered.attend(q, &in_order, ctx, ctx - 1, p, o4)),
            ),
            (
                "paged int8",
                Box::new(|| pools[1].attend(q, table, ctx, ctx - 1, p, o3)),
            ),
            (
                "paged f16",
                Box::new(|| pools[2].attend(q, table, ctx, ctx - 1, p, o5)),
            ),
        ];
        if let Some(name) = &only {
            variants.retain(|(n, _)| n == name);
        }
        measure(ctx, calls, rounds, &mut variants);
    }
}
