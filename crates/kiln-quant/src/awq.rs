//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
//! Acceleration"): before rounding, scale each input channel of a group of linears that share
//! an input by `s` (and the input by `1/s`, folded into the previous op by the caller), so the
//! channels that carry large activations lose less to rounding; then clip each weight group's
//! range where that lowers the output error.
//!
//! Follows AutoAWQ's `quantize/quantizer.py`:
//! - [`search_scales`] (`_search_best_scale` / `_compute_best_scale`): `x_mean` = mean `|x|` per
//!   input channel; `w_mean` = mean over the rows of all the group's linears of
//!   `|w| / (max |w| of its quantization group + 1e-6)`; for `ratio = k / n_grid`,
//!   `k = 0 .. n_grid`: `s = x_mean^ratio / (w_mean^(1-ratio) + 1e-4)` (duo scaling) or
//!   `x_mean^ratio`, clamped to `>= 1e-4`, divided by `sqrt(max s · min s)` (non-finite → 1);
//!   `W' = Q(W · diag s) · diag(1/s)`; the loss is the mean squared error of `X W'ᵀ` against
//!   `X Wᵀ`; the first lowest loss wins.
//! - [`search_clip`] (`_search_best_clip` / `_compute_best_clip`): every `max(1, n_tokens /
//!   clip_tokens)`-th token; for `i = 0 .. max_shrink · n_grid`, each (row, group) is clamped
//!   to `± max|w| · (1 - i / n_grid)`, rounded, and scored by the mean over tokens of
//!   `(Σ_group x · (w_q - w))²`; the first lowest error per (row, group) wins.
//!
//! Deviations:
//! - The grid is kiln's one grid ([`GroupParams::of`]: the range always contains 0, f16 scale,
//!   int.rs), not AutoAWQ's own (asymmetric min/max without forcing 0 into the range, a
//!   symmetric grid of `±(2^(bits-1) - 1)`), so the chosen scales and clips are the best for
//!   the integers kiln stores.
//! - The scale loss is measured on the outputs of the group's linears themselves (all of them,
//!   concatenated). AutoAWQ runs the whole module for some groups (q/k/v through attention,
//!   gate/up through the MLP); that needs the model here and is left out.
//! - Both errors are computed from the Gram matrix, `Σ_t (x_t · d)² = d (XᵀX) dᵀ`, in f64 (the
//!   same number; cheaper when tokens outnumber channels, and needs no `(n_tokens, rows)`
//!   outputs per candidate).
//!
//! Which groups to scale, which linears to clip (AutoAWQ skips q/k) and applying the scales to
//! the previous op are the caller's.

use crate::int::IntSpec;
use crate::linalg::{self, Mat, MatMut};
use crate::{Error, GroupParams, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqConfig {
    pub spec: IntSpec,
    /// Candidates per search (AutoAWQ: 20).
    pub n_grid: usize,
    /// Scale by activations and weights (`true`, AutoAWQ's default) or activations only.
    pub duo_scaling: bool,
    /// The clip search tries shrinking each group's range by up to this fraction (0.5).
    pub max_shrink: f32,
    /// About how many tokens the clip search samples (512).
    pub clip_tokens: usize,
}

impl AwqConfig {
    /// AutoAWQ's defaults.
    pub fn new(spec: IntSpec) -> AwqConfig {
        AwqConfig {
            spec,
            n_grid: 20,
            duo_scaling: true,
            max_shrink: 0.5,
            clip_tokens: 512,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSearch {
    /// One per input channel: weights are multiplied by it, inputs divided.
    pub scales: Vec<f32>,
    pub ratio: f32,
    /// The mean squared output error at the chosen ratio.
    pub loss: f64,
}

/// Searches the per-channel scales for the linears `ws` (each `(rows, cols)` row-major with its
/// row count) that all read the `(n_tokens, cols)` input `x` (module doc).
pub fn search_scales(
    x: &[f32],
    n_tokens: usize,
    cols: usize,
    ws: &[(&[f32], usize)],
    cfg: &AwqConfig,
) -> Result<ScaleSearch> {
    let spec = cfg.spec;
    check_search(x, n_tokens, cols, ws, cfg)?;
    let (x_mean, w_mean) = means(x, n_tokens, cols, ws, &spec);

    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut gram = vec![0.0; cols * cols];
    linalg::gram_update(&mut gram, cols, &x64, n_tokens, 0.0, 1.0);
    let total_rows: usize = ws.iter().map(|&(_, r)| r).sum();

    // As AutoAWQ: a NaN loss never wins; none finite is an error.
    let mut best: Option<ScaleSearch> = None;
    let mut best_loss = f64::INFINITY;
    for k in 0..cfg.n_grid {
        let ratio = k as f64 / cfg.n_grid as f64;
        let s = candidate_scales(&x_mean, &w_mean, ratio, cfg.duo_scaling);
        let mut sq = 0.0;
        for &(w, rows) in ws {
            let d = scaled_rounding_error(w, rows, cols, &s, &spec);
            sq += quadratic_forms(&d, rows, cols, &gram, cols)
                .iter()
                .sum::<f64>();
        }
        let loss = sq / (n_tokens * total_rows) as f64;
        if loss < best_loss {
            best_loss = loss;
            best = Some(ScaleSearch {
                scales: s,
                ratio: k as f32 / cfg.n_grid as f32,
                loss,
            });
        }
    }
    best.ok_or_else(|| Error::Invalid("AWQ scale search: no candidate has a finite loss".into()))
}

/// [`search_scales`] with the loss of a module around the linears (AutoAWQ's
/// `module2inspect`, e.g. a whole MLP for its gate/up projections): for each candidate,
/// `loss` gets every linear's effective weight `Q(W · diag s) · diag(1/s)` (row-major, as
/// `ws`) and returns the module's output error.
pub fn search_scales_by(
    x: &[f32],
    n_tokens: usize,
    cols: usize,
    ws: &[(&[f32], usize)],
    cfg: &AwqConfig,
    loss: &mut dyn FnMut(&[Vec<f32>]) -> Result<f64>,
) -> Result<ScaleSearch> {
    let spec = cfg.spec;
    check_search(x, n_tokens, cols, ws, cfg)?;
    let (x_mean, w_mean) = means(x, n_tokens, cols, ws, &spec);
    let mut best: Option<ScaleSearch> = None;
    let mut best_loss = f64::INFINITY;
    for k in 0..cfg.n_grid {
        let ratio = k as f64 / cfg.n_grid as f64;
        let s = candidate_scales(&x_mean, &w_mean, ratio, cfg.duo_scaling);
        let eff: Vec<Vec<f32>> = ws
            .iter()
            .map(|&(w, rows)| {
                let d = scaled_rounding_error(w, rows, cols, &s, &spec);
                w.iter().zip(d).map(|(&v, d)| v + d as f32).collect()
            })
            .collect();
        let l = loss(&eff)?;
        if l < best_loss {
            best_loss = l;
            best = Some(ScaleSearch {
                scales: s,
                ratio: k as f32 / cfg.n_grid as f32,
                loss: l,
            });
        }
    }
    best.ok_or_else(|| Error::Invalid("AWQ scale search: no candidate has a finite loss".into()))
}

/// The arguments of a scale search are consistent (see [`search_scales`]).
fn check_search(
    x: &[f32],
    n_tokens: usize,
    cols: usize,
    ws: &[(&[f32], usize)],
    cfg: &AwqConfig,
) -> Result<()> {
    cfg.spec.check(cols)?;
    check_input(x, n_tokens, cols)?;
    if ws.is_empty() || cfg.n_grid == 0 {
        return Err(Error::Invalid(
            "AWQ scale search needs at least one linear and n_grid > 0".into(),
        ));
    }
    for &(w, rows) in ws {
        check_weights(w, rows, cols)?;
    }
    Ok(())
}

/// The mean |x| of each input channel, and the mean over the linears' rows of each weight's
/// magnitude relative to its group's largest (AutoAWQ's `x_mean` and `w_mean`).
fn means(
    x: &[f32],
    n_tokens: usize,
    cols: usize,
    ws: &[(&[f32], usize)],
    spec: &IntSpec,
) -> (Vec<f64>, Vec<f64>) {
    let group = spec.group_len(cols);
    let total_rows: usize = ws.iter().map(|&(_, r)| r).sum();
    let mut x_mean = vec![0.0f64; cols];
    for xr in x.chunks_exact(cols) {
        for (m, &v) in x_mean.iter_mut().zip(xr) {
            *m += v.abs() as f64;
        }
    }
    x_mean.iter_mut().for_each(|m| *m /= n_tokens as f64);
    let mut w_mean = vec![0.0f64; cols];
    for &(w, _) in ws {
        for wr in w.chunks_exact(cols) {
            for (wg, mg) in wr.chunks_exact(group).zip(w_mean.chunks_exact_mut(group)) {
                let max = wg.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64 + 1e-6;
                for (m, &v) in mg.iter_mut().zip(wg) {
                    *m += v.abs() as f64 / max;
                }
            }
        }
    }
    w_mean.iter_mut().for_each(|m| *m /= total_rows as f64);
    (x_mean, w_mean)
}

/// The scales for one ratio (module doc), as f32.
fn candidate_scales(x_mean: &[f64], w_mean: &[f64], ratio: f64, duo: bool) -> Vec<f32> {
    let mut s: Vec<f64> = x_mean
        .iter()
        .zip(w_mean)
        .map(|(&x, &w)| {
            let s = if duo {
                x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4)
            } else {
                x.powf(ratio)
            };
            s.max(1e-4)
        })
        .collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let norm = (hi * lo).sqrt();
    s.iter_mut().for_each(|v| *v /= norm);
    s.into_iter()
        .map(|v| if v.is_finite() { v as f32 } else { 1.0 })
        .collect()
}

/// `Q(W · diag s) · diag(1/s) - W` as f64, `(rows, cols)`; the products and quotients in f32.
fn scaled_rounding_error(
    w: &[f32],
    rows: usize,
    cols: usize,
    s: &[f32],
    spec: &IntSpec,
) -> Vec<f64> {
    let group = spec.group_len(cols);
    let maxq = spec.maxq();
    let mut d = vec![0.0f64; rows * cols];
    d.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .for_each(|(dr, wr)| {
            let mut tmp = vec![0.0f32; group];
            for ((dg, wg), sg) in dr
                .chunks_exact_mut(group)
                .zip(wr.chunks_exact(group))
                .zip(s.chunks_exact(group))
            {
                for ((t, &v), &sv) in tmp.iter_mut().zip(wg).zip(sg) {
                    *t = v * sv;
                }
                let p = GroupParams::of(&tmp, spec);
                for (((o, &t), &v), &sv) in dg.iter_mut().zip(&tmp).zip(wg).zip(sg) {
                    *o = (p.fake(t, maxq) / sv - v) as f64;
                }
            }
        });
    d
}

/// `d_r · G_b · d_rᵀ` for every row `r` and block `b` of `block` columns of the `(rows, cols)`
/// `d`, with `G_b` the diagonal `(block, block)` block `b` of the `(cols, cols)` `g`;
/// `(rows, cols / block)` row-major.
fn quadratic_forms(d: &[f64], rows: usize, cols: usize, g: &[f64], block: usize) -> Vec<f64> {
    let n_blocks = cols / block;
    let dm = Mat::new(d, rows, cols, cols);
    let gm = Mat::new(g, cols, cols, cols);
    let mut out = vec![0.0; rows * n_blocks];
    let mut m = vec![0.0; rows * block];
    for b in 0..n_blocks {
        let c0 = b * block;
        // (rows, block) = d[:, c0..] · G[c0.., c0..]
        let dst = MatMut {
            data: &mut m,
            rows,
            cols: block,
            rs: block,
        };
        let db = dm.sub(0, c0, rows, block);
        linalg::gemm(dst, None, db, gm.sub(c0, c0, block, block), 1.0, true);
        for r in 0..rows {
            let dr = &d[r * cols + c0..r * cols + c0 + block];
            let mr = &m[r * block..(r + 1) * block];
            out[r * n_blocks + b] = dr.iter().zip(mr).map(|(a, b)| a * b).sum();
        }
    }
    out
}

/// Searches the clipping range of each (row, group) of the `(rows, cols)` `w` read by the
/// `(n_tokens, cols)` `x`; returns the best `max |w|`, `(rows, n_groups)` row-major.
pub fn search_clip(
    x: &[f32],
    n_tokens: usize,
    w: &[f32],
    rows: usize,
    cols: usize,
    cfg: &AwqConfig,
) -> Result<Vec<f32>> {
    let spec = cfg.spec;
    spec.check(cols)?;
    check_input(x, n_tokens, cols)?;
    check_weights(w, rows, cols)?;
    if cfg.clip_tokens == 0 || cfg.n_grid == 0 {
        return Err(Error::Invalid(
            "AWQ clip search needs clip_tokens > 0 and n_grid > 0".into(),
        ));
    }
    let group = spec.group_len(cols);
    let n_groups = cols / group;
    let maxq = spec.maxq();
    let step = (n_tokens / cfg.clip_tokens).max(1);
    let xs: Vec<f64> = x
        .chunks_exact(cols)
        .step_by(step)
        .flatten()
        .map(|&v| v as f64)
        .collect();
    let n_sample = xs.len() / cols;
    // Only the diagonal blocks are read; the full Gram costs little more than them.
    let mut gram = vec![0.0; cols * cols];
    linalg::gram_update(&mut gram, cols, &xs, n_sample, 0.0, 1.0 / n_sample as f64);

    let org_max: Vec<f32> = w
        .chunks_exact(group)
        .map(|g| g.iter().fold(0.0f32, |a, v| a.max(v.abs())))
        .collect();
    let mut best = org_max.clone();
    let mut min_err = vec![f64::INFINITY; rows * n_groups];
    let n_shrink = (cfg.max_shrink as f64 * cfg.n_grid as f64) as usize;
    let mut d = vec![0.0f64; rows * cols];
    for i in 0..n_shrink {
        let factor = 1.0 - i as f64 / cfg.n_grid as f64;
        d.par_chunks_mut(cols)
            .zip(w.par_chunks(cols))
            .zip(org_max.par_chunks(n_groups))
            .for_each(|((dr, wr), mr)| {
                let mut tmp = vec![0.0f32; group];
                for ((dg, wg), &m) in dr
                    .chunks_exact_mut(group)
                    .zip(wr.chunks_exact(group))
                    .zip(mr)
                {
                    let mv = (m as f64 * factor) as f32;
                    for (t, &v) in tmp.iter_mut().zip(wg) {
                        *t = v.clamp(-mv, mv);
                    }
                    let p = GroupParams::of(&tmp, &spec);
                    for ((o, &t), &v) in dg.iter_mut().zip(&tmp).zip(wg) {
                        *o = p.fake(t, maxq) as f64 - v as f64;
                    }
                }
            });
        let err = quadratic_forms(&d, rows, cols, &gram, group);
        for (k, &e) in err.iter().enumerate() {
            if e < min_err[k] {
                min_err[k] = e;
                best[k] = (org_max[k] as f64 * factor) as f32;
            }
        }
    }
    Ok(best)
}

/// Clamps each (row, group) of the `(rows, cols)` `w` to `± max_vals[row, group]`, groups of
/// `group` columns.
pub fn apply_clip(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    group: usize,
    max_vals: &[f32],
) -> Result<()> {
    check_weights(w, rows, cols)?;
    if group == 0 || !cols.is_multiple_of(group) {
        return Err(Error::Invalid(format!(
            "group size {group} does not divide the {cols} input columns"
        )));
    }
    if max_vals.len() != rows * (cols / group) {
        return Err(Error::SizeMismatch {
            what: "clip values",
            expected: rows * (cols / group),
            got: max_vals.len(),
        });
    }
    if max_vals.iter().any(|m| m.is_nan() || *m < 0.0) {
        return Err(Error::Invalid("clip values must be >= 0".into()));
    }
    for (g, &m) in w.chunks_exact_mut(group).zip(max_vals) {
        g.iter_mut().for_each(|v| *v = v.clamp(-m, m));
    }
    Ok(())
}

fn check_input(x: &[f32], n_tokens: usize, cols: usize) -> Result<()> {
    if n_tokens == 0 || x.len() != n_tokens * cols {
        return Err(Error::SizeMismatch {
            what: "AWQ calibration input (at least one token)",
            expected: n_tokens.max(1) * cols,
            got: x.len(),
        });
    }
    Ok(())
}

fn check_weights(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    if w.len() != rows * cols {
        return Err(Error::SizeMismatch {
            what: "weights",
            expected: rows * cols,
            got: w.len(),
        });
    }
    Ok(())
}
