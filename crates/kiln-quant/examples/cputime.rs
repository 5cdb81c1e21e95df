//! Single-thread kernel timing by CPU time (immune to other processes sharing the cores), and
//! the wall time (for multi-thread runs):
//! `RAYON_NUM_THREADS=1 cargo run --release -p kiln-quant --example cputime -- q4_1 576 576 512`.

use kiln_quant::{GgmlType, QMatrix};

fn cpu_ns() -> u64 {
    // First field of schedstat: nanoseconds this thread ran on a CPU.
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let ty = match a.get(1).map(String::as_str) {
        Some("q8_0") => GgmlType::Q8_0,
        Some("q4_0") => GgmlType::Q4_0,
        Some("q4_k") => GgmlType::Q4_K,
        Some("q6_k") => GgmlType::Q6_K,
        _ => GgmlType::Q4_1,
    };
    let arg = |i: usize, d: usize| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rows, cols, n_tokens) = (arg(2, 576), arg(3, 576), arg(4, 1));
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
        .collect();
    let m = QMatrix::quantize(ty, rows, cols, &w).expect("shape");
    let x: Vec<f32> = (0..n_tokens * cols)
        .map(|i| ((i * 31 % 97) as f32 / 97.0) - 0.5)
        .collect();
    let mut out = vec![0f32; n_tokens * rows];
    let iters = (2e9 / (rows * cols * n_tokens) as f64).clamp(3.0, 100_000.0) as usize;
    m.matmul(&x, n_tokens, &mut out).expect("matmul");
    let (mut best, mut best_wall) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let (t0, w0) = (cpu_ns(), std::time::Instant::now());
        for _ in 0..iters {
            m.matmul(&x, n_tokens, &mut out).expect("matmul");
        }
        best = best.min((cpu_ns() - t0) as f64 / iters as f64);
        best_wall = best_wall.min(w0.elapsed().as_nanos() as f64 / iters as f64);
    }
    // With more than one rayon thread the CPU time is the calling thread's share only.
    println!("wall {:.1} us/call (best of 5)", best_wall / 1e3);
    let gflops = 2.0 * (rows * cols * n_tokens) as f64 / best;
    let gbs = (rows * m.row_bytes()) as f64 / best;
    println!("{ty} {rows}x{cols} n_tokens={n_tokens}: {:.1} us/call, {gflops:.1} GFLOP/s, weights {gbs:.2} GB/s", best / 1e3);
}
