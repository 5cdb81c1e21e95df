//! The matmuls of one SmolLM2-135M forward pass (Q4_1 layers, Q8_0 output), nothing else:
//! a lower bound on the engine's time per token, to set against llama.cpp's whole-model numbers.
//! 30 layers of distinct weights (format from `KILN_QTYPE`) (so they stream from DRAM as in the real model: ~96 MB/token).
//! `RAYON_NUM_THREADS=2 cargo run --release -p kiln-quant --example smollm2_matmuls [-- inside]`

use std::time::Instant;

use kiln_quant::{GgmlType, QMatrix};

const HIDDEN: usize = 576;
const KV: usize = 192;
const FFN: usize = 1536;
const LAYERS: usize = 30;
const VOCAB: usize = 49152;

fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QMatrix {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    QMatrix::quantize(ty, rows, cols, &w).expect("valid shape")
}

/// Runs every layer matmul for `n` tokens, then the output matmul for `n_logits` tokens.
fn forward(layers: &[[QMatrix; 7]], out_m: &QMatrix, n: usize, n_logits: usize) {
    let x = vec![0.1f32; n * FFN];
    let mut y = vec![0f32; n * FFN.max(HIDDEN)];
    for l in layers {
        for m in l {
            let (rows, cols) = (m.rows(), m.cols());
            m.matmul(&x[..n * cols], n, &mut y[..n * rows])
                .expect("matmul");
        }
    }
    let mut logits = vec![0f32; n_logits * VOCAB];
    out_m
        .matmul(&x[..n_logits * HIDDEN], n_logits, &mut logits)
        .expect("matmul");
}

fn main() {
    // `inside` runs the whole thing on a pool worker, like an engine that wraps its forward pass
    // in `pool.install`; otherwise the matmuls are called from the main thread.
    if std::env::args().any(|a| a == "inside") {
        eprintln!("running inside the rayon pool");
        rayon::join(run, || ());
    } else {
        run();
    }
}

fn run() {
    // `KILN_QTYPE=q8_0` (or q4_0, q4_k, ...) picks the layers' format; Q4_1 by default.
    let q = match std::env::var("KILN_QTYPE") {
        Ok(name) => (0..64)
            .filter_map(|id| GgmlType::from_u32(id).ok())
            .find(|t| t.name().eq_ignore_ascii_case(&name))
            .expect("KILN_QTYPE: a GGML type name"),
        Err(_) => GgmlType::Q4_1,
    };
    let t0 = Instant::now();
    let layers: Vec<[QMatrix; 7]> = (0..LAYERS as u64)
        .map(|l| {
            [
                matrix(q, HIDDEN, HIDDEN, 7 * l),
                matrix(q, KV, HIDDEN, 7 * l + 1),
                matrix(q, KV, HIDDEN, 7 * l + 2),
                matrix(q, HIDDEN, HIDDEN, 7 * l + 3),
                matrix(q, FFN, HIDDEN, 7 * l + 4),
                matrix(q, FFN, HIDDEN, 7 * l + 5),
                matrix(q, HIDDEN, FFN, 7 * l + 6),
            ]
        })
        .collect();
    let out_m = matrix(GgmlType::Q8_0, VOCAB, HIDDEN, 999);
    let bytes: usize = layers
        .iter()
        .flatten()
        .chain([&out_m])
        .map(|m| m.data().len())
        .sum();
    eprintln!(
        "built {:.1} MB of weights in {:.1} s",
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    forward(&layers, &out_m, 1, 1);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..20 {
            forward(&layers, &out_m, 1, 1);
        }
        best = best.min(t.elapsed().as_secs_f64() / 20.0);
    }
    println!(
        "decode (1 token, all matmuls): {:.2} ms/token = {:.0} tokens/s, {:.1} GB/s of weights",
        best * 1e3,
        1.0 / best,
        bytes as f64 / best / 1e9
    );
    // The output matrix alone (30 MB, one long streaming call) against the 210 short layer calls.
    let x = vec![0.1f32; HIDDEN];
    let mut logits = vec![0f32; VOCAB];
    let mut best_out = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        out_m.matmul(&x, 1, &mut logits).expect("matmul");
        best_out = best_out.min(t.elapsed().as_secs_f64());
    }
    println!(
        "output matmul alone: {:.2} ms = {:.1} GB/s; layers: {:.2} ms = {:.1} GB/s",
        best_out * 1e3,
        out_m.data().len() as f64 / best_out / 1e9,
        (best - best_out) * 1e3,
        (bytes - out_m.data().len()) as f64 / (best - best_out) / 1e9
    );
    for (n, n_logits, what) in [
        (
            512,
            1,
            "prefill 512, logits for the last token only, as llama-bench",
        ),
        (512, 512, "prefill 512, logits for all"),
        (64, 64, "a decode step of 64 sequences"),
    ] {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            forward(&layers, &out_m, n, n_logits);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{what}: {:.1} ms = {:.0} tokens/s",
            best * 1e3,
            n as f64 / best
        );
    }
}
