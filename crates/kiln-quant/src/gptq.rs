//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers"): quantize a linear layer's weights one input column at a time and
//! push each column's rounding error onto the columns not yet quantized, weighted by the inverse
//! Hessian of the layer's squared output error, `H = 2/n · Σ xᵀx` over calibration inputs.
//!
//! Follows the paper's reference `fasterquant` (IST-DASLab/gptq `gptq.py`, also AutoGPTQ's
//! `quantization/gptq.py`) step by step:
//! 1. per-channel grids (`group_size: None`) are fit once per row on the original weights;
//! 2. dead inputs (`H_ii = 0`) get `H_ii = 1` and their weights zeroed; static groups are fit
//!    here, on these weights in the original column order;
//! 3. act-order permutes the columns by descending `diag(H)`;
//! 4. `H += damp_percent · mean(diag H) · I`; `U` = upper Cholesky factor of `H⁻¹`;
//! 5. columns are visited in lazy batches of `block_size`: inside a batch each column is
//!    rounded, its scaled error `e = (w - q) / U_ii` is pushed onto the batch's later columns
//!    with `U[i, ..]`, and at the end of the batch one GEMM applies all its errors to the
//!    columns after it. The loss is the reference's `Σ (w - q)² / U_ii² / 2`.
//!
//! Faithful details that are easy to miss:
//! - A group whose first column falls inside a batch is fit on the weights as they stand at
//!   the *start* of that batch (the reference fits on `W`, which a batch only updates at its
//!   end, while it rounds from the batch's working copy), so the block size changes results.
//! - With act-order and no static groups, groups are runs of the permuted order: the result
//!   has `g_idx[perm[j]] = j / group_size` and the scales in that group order.
//!
//! Deviations: everything is in f64 (the reference is f32) except the grid itself, which is
//! [`GroupParams`] on the f32 value of the current weight (int.rs: the f16-rounded scale);
//! the act-order sort is stable (ties keep the lower index; torch's `argsort` leaves ties
//! unspecified); `n` in `H` counts calibration rows (the reference counts the batches given to
//! `add_batch`, which only rescales `H` and the loss, not the result); and `U` comes from one
//! Cholesky and one triangular inverse instead of three steps (linalg.rs; same matrix).
//!
//! Rows are independent given `U`, so rayon runs over fixed chunks of rows (bit-identical on
//! any thread count).

use crate::int::IntSpec;
use crate::linalg::{self, Mat, MatMut};
use crate::{Error, GroupParams, IntMatrix, Result};
use rayon::prelude::*;

/// The running Hessian `H = 2/n · Σ xᵀx` of one layer input over `n` calibration rows, in f64.
#[derive(Debug, Clone)]
pub struct Hessian {
    cols: usize,
    n_samples: usize,
    /// `(cols, cols)` row-major, symmetric.
    h: Vec<f64>,
}

impl Hessian {
    pub fn new(cols: usize) -> Hessian {
        Hessian {
            cols,
            n_samples: 0,
            h: vec![0.0; cols * cols],
        }
    }

    /// Adds a `(n_rows, cols)` row-major batch with the reference's running average:
    /// `H ← H · n/(n + n_rows) + 2/(n + n_rows) · XᵀX`.
    pub fn add(&mut self, x: &[f32], n_rows: usize) -> Result<()> {
        if x.len() != n_rows * self.cols {
            return Err(Error::SizeMismatch {
                what: "Hessian input batch",
                expected: n_rows * self.cols,
                got: x.len(),
            });
        }
        if n_rows == 0 {
            return Ok(());
        }
        let total = self.n_samples + n_rows;
        let keep = self.n_samples as f64 / total as f64;
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        linalg::gram_update(&mut self.h, self.cols, &x, n_rows, keep, 2.0 / total as f64);
        self.n_samples = total;
        Ok(())
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The number of calibration rows added so far.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// `(cols, cols)` row-major.
    pub fn matrix(&self) -> &[f64] {
        &self.h
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    pub spec: IntSpec,
    /// Dampening added to the diagonal, as a fraction of its mean (reference: 0.01).
    pub damp_percent: f64,
    /// Columns per lazy batch (reference: 128).
    pub block_size: usize,
    /// Visit columns by descending `H_ii` ("desc_act").
    pub act_order: bool,
    /// Fit every group's grid before the loop on the unpermuted weights (only with groups).
    pub static_groups: bool,
}

impl GptqConfig {
    /// The reference's defaults: 1% dampening, blocks of 128, natural order.
    pub fn new(spec: IntSpec) -> GptqConfig {
        GptqConfig {
            spec,
            damp_percent: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GptqOutput {
    pub m: IntMatrix,
    /// The reference's `Σ Losses`: `Σ (w - q)² / U_ii² / 2` over all weights.
    pub loss: f64,
}

/// Where the grid of a weight comes from.
#[derive(Clone, Copy)]
enum Grids<'a> {
    /// One per row, fit before the loop (`group_size: None`).
    PerChannel(&'a [GroupParams]),
    /// `(rows, n_groups)` in original group order, fit before the loop.
    Static(&'a [GroupParams]),
    /// Refit at each group boundary of the visiting order.
    Dynamic,
}

/// What every row chunk shares.
struct Plan<'a> {
    cols: usize,
    spec: IntSpec,
    group: usize,
    block: usize,
    /// Visiting order: position `j` holds original column `perm[j]`.
    perm: &'a [usize],
    /// `(cols, cols)` upper factor of the permuted, dampened `H⁻¹`.
    u: &'a [f64],
    grids: Grids<'a>,
}

/// One chunk's results, in visiting order.
struct Chunk {
    q: Vec<u8>,
    /// `(rows, n_groups)`, only for [`Grids::Dynamic`].
    params: Vec<GroupParams>,
    loss: f64,
}

/// Rows per parallel task: enough for the batch GEMM to amortize packing `U`, small enough
/// that a 192-row matrix still splits.
const ROW_CHUNK: usize = 32;

/// Quantizes the `(rows, cols)` row-major `w` (out_features × in_features) with GPTQ given the
/// Hessian of its input (module doc).
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    cfg: &GptqConfig,
) -> Result<GptqOutput> {
    let spec = cfg.spec;
    spec.check(cols)?;
    if w.len() != rows * cols {
        return Err(Error::SizeMismatch {
            what: "weights to quantize",
            expected: rows * cols,
            got: w.len(),
        });
    }
    if h.cols != cols {
        return Err(Error::SizeMismatch {
            what: "Hessian columns",
            expected: cols,
            got: h.cols,
        });
    }
    if cfg.block_size == 0 || cfg.damp_percent.is_nan() || cfg.damp_percent < 0.0 {
        return Err(Error::Invalid(format!(
            "GPTQ needs block_size > 0 and damp_percent >= 0, got {} and {}",
            cfg.block_size, cfg.damp_percent
        )));
    }
    let group = spec.group_len(cols);
    let n_groups = cols / group;

    // 1. Per-channel grids on the original weights.
    let per_channel: Vec<GroupParams> = match spec.group_size {
        None => w
            .chunks_exact(cols)
            .map(|r| GroupParams::of(r, &spec))
            .collect(),
        Some(_) => Vec::new(),
    };
    // 2. Dead inputs.
    let mut hm = h.h.clone();
    let mut w0 = w.to_vec();
    for i in 0..cols {
        if hm[i * cols + i] == 0.0 {
            hm[i * cols + i] = 1.0;
            w0.iter_mut().skip(i).step_by(cols).for_each(|v| *v = 0.0);
        }
    }
    let static_grids: Vec<GroupParams> = if spec.group_size.is_some() && cfg.static_groups {
        w0.chunks_exact(group)
            .map(|g| GroupParams::of(g, &spec))
            .collect()
    } else {
        Vec::new()
    };
    let grids = match spec.group_size {
        None => Grids::PerChannel(&per_channel),
        Some(_) if cfg.static_groups => Grids::Static(&static_grids),
        Some(_) => Grids::Dynamic,
    };
    // 3. Act-order.
    let mut perm: Vec<usize> = (0..cols).collect();
    if cfg.act_order {
        perm.sort_by(|&a, &b| hm[b * cols + b].total_cmp(&hm[a * cols + a]));
    }
    let mut hp: Vec<f64> = (0..cols * cols)
        .map(|k| hm[perm[k / cols] * cols + perm[k % cols]])
        .collect();
    // 4. Dampening and the inverse's factor.
    let damp = cfg.damp_percent * (0..cols).map(|i| hp[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        hp[i * cols + i] += damp;
    }
    let u = linalg::upper_cholesky_of_inverse(&hp, cols).map_err(|e| {
        Error::Invalid(format!(
            "GPTQ: the dampened Hessian cannot be factored ({e}); raise damp_percent"
        ))
    })?;
    // 5. The column loop, by chunks of rows.
    let plan = Plan {
        cols,
        spec,
        group,
        block: cfg.block_size,
        perm: &perm,
        u: &u,
        grids,
    };
    let chunks: Vec<Chunk> = w0
        .par_chunks(ROW_CHUNK * cols)
        .enumerate()
        .map(|(ci, wc)| quantize_rows(&plan, wc, ci * ROW_CHUNK))
        .collect();

    let mut m = IntMatrix::zeroed(rows, cols, spec);
    let mut loss = 0.0;
    for (ci, c) in chunks.iter().enumerate() {
        let r0 = ci * ROW_CHUNK;
        for (r, qr) in c.q.chunks_exact(cols).enumerate() {
            let dst = &mut m.q[(r0 + r) * cols..(r0 + r + 1) * cols];
            for (j, &q) in qr.iter().enumerate() {
                dst[perm[j]] = q;
            }
        }
        loss += c.loss;
        if matches!(grids, Grids::Dynamic) {
            let span = r0 * n_groups..r0 * n_groups + c.params.len();
            set_params(&mut m, span, &c.params);
        }
    }
    match grids {
        Grids::PerChannel(p) | Grids::Static(p) => set_params(&mut m, 0..rows * n_groups, p),
        Grids::Dynamic => {
            if cfg.act_order {
                let mut g_idx = vec![0u32; cols];
                for (j, &c) in perm.iter().enumerate() {
                    g_idx[c] = (j / group) as u32;
                }
                m.g_idx = Some(g_idx);
            }
        }
    }
    Ok(GptqOutput { m, loss })
}

fn set_params(m: &mut IntMatrix, span: std::ops::Range<usize>, p: &[GroupParams]) {
    for (i, p) in span.zip(p) {
        m.scales[i] = p.scale;
        m.zeros[i] = p.zero;
    }
}

/// GPTQ's column loop for the rows `w_rows` (original column order, dead columns zeroed),
/// the first of which is row `r0` of the matrix.
fn quantize_rows(plan: &Plan<'_>, w_rows: &[f32], r0: usize) -> Chunk {
    let Plan {
        cols,
        spec,
        group,
        block,
        perm,
        u,
        grids,
    } = *plan;
    let nr = w_rows.len() / cols;
    let n_groups = cols / group;
    let maxq = spec.maxq();
    // (nr, cols) in visiting order.
    let mut wk: Vec<f64> = w_rows
        .chunks_exact(cols)
        .flat_map(|r| perm.iter().map(move |&c| r[c] as f64))
        .collect();
    let mut q = vec![0u8; nr * cols];
    let dynamic = matches!(grids, Grids::Dynamic);
    let zero = GroupParams {
        scale: 1.0,
        zero: 0,
    };
    let mut params = vec![zero; if dynamic { nr * n_groups } else { 0 }];
    let mut err = vec![0.0f64; nr * block];
    let mut tmp = vec![0.0f32; group];
    let mut loss = 0.0;
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let bw = i2 - i1;
        if dynamic {
            // Groups starting in this batch are fit on the weights at its start (module doc).
            for c in (i1..i2).filter(|c| c % group == 0) {
                for r in 0..nr {
                    for (t, &v) in tmp.iter_mut().zip(&wk[r * cols + c..r * cols + c + group]) {
                        *t = v as f32;
                    }
                    params[r * n_groups + c / group] = GroupParams::of(&tmp, &spec);
                }
            }
        }
        for r in 0..nr {
            let row = &mut wk[r * cols..(r + 1) * cols];
            let er = &mut err[r * bw..(r + 1) * bw];
            for i in i1..i2 {
                let p = match grids {
                    Grids::PerChannel(pc) => pc[r0 + r],
                    Grids::Static(sp) => sp[(r0 + r) * n_groups + perm[i] / group],
                    Grids::Dynamic => params[r * n_groups + i / group],
                };
                let wv = row[i];
                let qi = p.quantize(wv as f32, maxq);
                q[r * cols + i] = qi;
                let e = (wv - p.dequantize(qi) as f64) / u[i * cols + i];
                loss += e * e / 2.0;
                er[i - i1] = e;
                let ur = &u[i * cols + i + 1..i * cols + i2];
                for (x, &uv) in row[i + 1..i2].iter_mut().zip(ur) {
                    *x -= e * uv;
                }
            }
        }
        if i2 < cols {
            // W[:, i2..] -= Err · U[i1..i2, i2..]
            let dst = MatMut {
                data: &mut wk[i2..],
                rows: nr,
                cols: cols - i2,
                rs: cols,
            };
            let e = Mat::new(&err[..nr * bw], nr, bw, bw);
            let ub = Mat::new(u, cols, cols, cols).sub(i1, i2, bw, cols - i2);
            linalg::gemm(dst, Some(1.0), e, ub, -1.0, false);
        }
    }
    Chunk { q, params, loss }
}
