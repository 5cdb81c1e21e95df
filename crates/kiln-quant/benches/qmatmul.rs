//! Quantized matmul at SmolLM2-135M shapes (hidden 576, intermediate 1536, vocab 49152).
//!
//! `decode/*` (n_tokens = 1) reports weight bytes per second; `prefill/*` (n_tokens = 512) reports
//! FLOP/s (2·rows·cols·n_tokens per call, shown by criterion as elements/s).
//! Run with `RAYON_NUM_THREADS=2 cargo bench -p kiln-quant`; `KILN_QUANT_ISA=avx2|scalar` caps
//! the kernels. Q4_K needs cols % 256 == 0, so its 576-wide shapes use 512 instead.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_quant::{GgmlType, QMatrix};
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];

fn matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    // Cheap deterministic pseudo-random weights (an LCG): quantizing 28M values with a real RNG
    // would dominate the benchmark's start-up.
    let mut s = 0x2545F4914F6CDD1Du64;
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    QMatrix::quantize(ty, rows, cols, &w).expect("valid benchmark shape")
}

fn shape_for(ty: GgmlType, (rows, cols): (usize, usize)) -> (usize, usize) {
    if ty == GgmlType::Q4_K && cols % 256 != 0 {
        (rows, 512)
    } else {
        (rows, cols)
    }
}

fn bench(c: &mut Criterion) {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K] {
        for shape in SHAPES {
            let (rows, cols) = shape_for(ty, shape);
            let m = matrix(ty, rows, cols);
            let id = format!("{ty}/{rows}x{cols}");

            let mut g = c.benchmark_group("decode");
            g.warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            g.throughput(Throughput::Bytes((rows * m.row_bytes()) as u64));
            let x = vec![0.25f32; cols];
            let mut out = vec![0f32; rows];
            // Like an engine that runs its forward pass inside the pool: the calling thread is a
            // rayon worker and takes part (see the README on calling from outside the pool).
            g.bench_function(BenchmarkId::from_parameter(&id), |b| {
                b.iter_custom(|iters| {
                    rayon::join(
                        || {
                            let t0 = Instant::now();
                            for _ in 0..iters {
                                m.matmul(&x, 1, &mut out).expect("matmul");
                            }
                            t0.elapsed()
                        },
                        || (),
                    )
                    .0
                })
            });
            if rows == 576 && cols == 576 {
                g.bench_function(BenchmarkId::new("outside-pool", &id), |b| {
                    b.iter(|| m.matmul(&x, 1, &mut out).expect("matmul"))
                });
            }
            g.finish();

            let n_tokens = 512;
            let mut g = c.benchmark_group("prefill512");
            g.sample_size(10).warm_up_time(Duration::from_millis(500));
            g.measurement_time(Duration::from_secs(if rows > 10_000 { 6 } else { 2 }));
            g.throughput(Throughput::Elements((2 * rows * cols * n_tokens) as u64));
            let x: Vec<f32> = (0..n_tokens * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let mut out = vec![0f32; n_tokens * rows];
            g.bench_function(BenchmarkId::from_parameter(&id), |b| {
                b.iter(|| m.matmul(&x, n_tokens, &mut out).expect("matmul"))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
