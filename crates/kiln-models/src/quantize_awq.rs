//! AWQ over one block (Lin et al. 2023; AutoAWQ's order of steps): for each input group, the
//! per-input-channel scales `s` searched from the activation magnitudes (kiln-quant `awq`),
//! folded into the op before the group — the RMSNorm for q/k/v and gate/up, the rows of
//! `up_proj` for `down_proj`, the rows of `v_proj` for `o_proj` when their shapes match (not
//! with grouped-query attention, as AutoAWQ) — then a clipping search per linear (not q/k,
//! whose errors the softmax amplifies), then round-to-nearest of the scaled, clipped weights.
//!
//! All scales of a block are searched on its original weights before any is applied, as
//! AutoAWQ does. The loss of a candidate is measured where AutoAWQ's `module2inspect` looks:
//! for q/k/v, the block's output (the calibration session runs the block with the candidate
//! q/k/v and everything else float, `calibrate::Trial`); for gate/up, the whole gated MLP's
//! output (through SiLU and the float `down_proj`, on up to 1024 of the calibration rows); for
//! the others, the group's own outputs. Folds are found by the Hugging Face names of the LLaMA
//! family; a group whose preceding op is unknown (another family, MoE experts) gets no
//! scaling, only the clip.
//!
//! The weights handed back to the calibration pass are the functions the exported layers
//! compute without the fold: `diag(r) · Q(diag(1/r) · W · diag(s)) · diag(1/s)`, where `r` is
//! the row divisor a later group folded into this linear. With [`Method::AwqGptq`], `Q` is
//! GPTQ on the scaled inputs `X · diag(1/s)` instead of clip + round-to-nearest.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use kiln_nn::calibrate::{InputGroup, Trial};
use kiln_quant::awq::{apply_clip, search_clip, search_scales, search_scales_by, AwqConfig};
use kiln_quant::gptq::{gptq, Hessian};
use kiln_quant::IntMatrix;
use kiln_tensor::Tensor;

use crate::quantize::{gptq_config, host_f32, rel_error, sample_rows, LayerReport, Method, State};
use crate::Result;

/// Where a group's input scales fold: a norm's weight, or the rows of another linear.
enum Fold {
    Norm(String),
    Rows(String),
    None,
}

fn fold_of(first: &str, names: &[&str]) -> Fold {
    let Some((prefix, role)) = first.rsplit_once('.').and_then(|(p, last)| {
        let (p2, parent) = p.rsplit_once('.')?;
        Some((p2.to_string(), format!("{parent}.{last}")))
    }) else {
        return Fold::None;
    };
    match role.as_str() {
        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => {
            Fold::Norm(format!("{prefix}.input_layernorm.weight"))
        }
        "mlp.gate_proj" | "mlp.up_proj" => {
            Fold::Norm(format!("{prefix}.post_attention_layernorm.weight"))
        }
        "mlp.down_proj" => {
            let up = format!("{prefix}.mlp.up_proj");
            if names.contains(&up.as_str()) {
                Fold::Rows(up)
            } else {
                Fold::None
            }
        }
        "self_attn.o_proj" => {
            let v = format!("{prefix}.self_attn.v_proj");
            if names.contains(&v.as_str()) {
                Fold::Rows(v)
            } else {
                Fold::None
            }
        }
        _ => Fold::None,
    }
}

pub(crate) fn block(
    state: &RefCell<State>,
    groups: &[InputGroup],
    trial: &mut Trial<'_>,
) -> Result<Vec<Tensor>> {
    let opts = state.borrow().opts.clone();
    let spec = opts.spec;
    let with_gptq = opts.method == Method::AwqGptq;
    let cfg = AwqConfig::new(spec);
    let names: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.linears.iter().map(|(n, _)| &**n))
        .collect();
    // Original weights, (rows, cols) each.
    let mut weights: BTreeMap<String, (Vec<f32>, usize, usize)> = BTreeMap::new();
    for g in groups {
        for (n, w) in &g.linears {
            let (rows, cols) = w.dims2("awq")?;
            weights.insert(n.to_string(), (host_f32(w)?, rows, cols));
        }
    }
    // 1. Every group's input scales, on the original weights.
    let mut input_scale: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut row_div: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut search_time = Vec::with_capacity(groups.len());
    for g in groups {
        let t0 = Instant::now();
        let first = &*g.linears[0].0;
        let fold = fold_of(first, &names);
        let rows_shape_ok = match &fold {
            Fold::Rows(target) => weights.get(target).is_some_and(|w| w.1 == g.cols),
            _ => true,
        };
        if matches!(fold, Fold::None) || !rows_shape_ok {
            search_time.push(t0.elapsed().as_secs_f64());
            continue;
        }
        let ws: Vec<(&[f32], usize)> = g
            .linears
            .iter()
            .map(|(n, _)| {
                let w = &weights[&**n];
                (w.0.as_slice(), w.1)
            })
            .collect();
        let is_qkv = matches!(&fold, Fold::Norm(n) if n.ends_with("input_layernorm.weight"));
        let found = match mlp_of(g, &weights) {
            // gate/up: the loss of the whole MLP's output, as AutoAWQ's module2inspect.
            Some(mlp) => {
                let mut loss = |eff: &[Vec<f32>]| {
                    mlp.loss(eff)
                        .map_err(|e| kiln_quant::Error::Invalid(e.to_string()))
                };
                search_scales_by(&g.x, g.n_rows, g.cols, &ws, &cfg, &mut loss)?
            }
            // q/k/v: the loss of the block's output with the candidate q/k/v and everything
            // else as it is (AutoAWQ inspects the attention module; the rest of the block
            // is float here, so the block's output differs only through it).
            None if is_qkv => {
                let mut loss = |eff: &[Vec<f32>]| -> kiln_quant::Result<f64> {
                    let w: Vec<(std::sync::Arc<str>, Tensor)> = g
                        .linears
                        .iter()
                        .zip(eff)
                        .map(|((n, t), e)| {
                            let dims = t.dims().to_vec();
                            Tensor::from_vec(e.clone(), dims).map(|t| (n.clone(), t))
                        })
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| kiln_quant::Error::Invalid(e.to_string()))?;
                    trial(&w).map_err(|e| kiln_quant::Error::Invalid(e.to_string()))
                };
                search_scales_by(&g.x, g.n_rows, g.cols, &ws, &cfg, &mut loss)?
            }
            None => search_scales(&g.x, g.n_rows, g.cols, &ws, &cfg)?,
        };
        for (n, _) in &g.linears {
            input_scale.insert(n.to_string(), found.scales.clone());
        }
        match fold {
            Fold::Norm(norm) => {
                state
                    .borrow_mut()
                    .dense_divisors
                    .insert(norm, found.scales.clone());
            }
            Fold::Rows(target) => {
                row_div.insert(target, found.scales.clone());
            }
            Fold::None => {}
        }
        search_time.push(t0.elapsed().as_secs_f64());
    }
    // 2. Scale, clip and quantize each linear.
    let mut out = Vec::new();
    for (g, t_search) in groups.iter().zip(search_time) {
        let share = t_search / g.linears.len() as f64;
        // AWQ + GPTQ: one Hessian per group, of the inputs its scaled weights see.
        let mut hessian: Option<Hessian> = None;
        for (n, _) in &g.linears {
            let t0 = Instant::now();
            let (w, rows, cols) = &weights[&**n];
            let (rows, cols) = (*rows, *cols);
            let s = input_scale.get(&**n);
            let r = row_div.get(&**n);
            let mut ws = w.clone();
            for i in 0..rows {
                let rd = r.map_or(1.0, |r| r[i]);
                for c in 0..cols {
                    ws[i * cols + c] = ws[i * cols + c] * s.map_or(1.0, |s| s[c]) / rd;
                }
            }
            // The inputs the scaled weights see.
            let xs: Vec<f32> = match s {
                Some(s) => {
                    g.x.chunks_exact(cols)
                        .flat_map(|row| row.iter().zip(s).map(|(x, s)| x / s))
                        .collect()
                }
                None => g.x.clone(),
            };
            let m = if with_gptq {
                if hessian.is_none() {
                    let mut h = Hessian::new(cols);
                    h.add(&xs, g.n_rows)?;
                    hessian = Some(h);
                }
                let h = hessian.as_ref().expect("built above");
                gptq(&ws, rows, cols, h, &gptq_config(&opts))?.m
            } else {
                if !(n.ends_with("q_proj") || n.ends_with("k_proj")) {
                    let max = search_clip(&xs, g.n_rows, &ws, rows, cols, &cfg)?;
                    apply_clip(&mut ws, rows, cols, spec.group_len(cols), &max)?;
                }
                IntMatrix::rtn(&ws, rows, cols, spec)?
            };
            // What the unfolded layer computes.
            let mut eff = m.dequantize();
            for i in 0..rows {
                let rd = r.map_or(1.0, |r| r[i]);
                for c in 0..cols {
                    eff[i * cols + c] = eff[i * cols + c] * rd / s.map_or(1.0, |s| s[c]);
                }
            }
            let eff = Tensor::from_vec(eff, [rows, cols])?;
            let sample = sample_rows(&g.x, g.n_rows, cols, 512)?;
            let err = rel_error(&sample, w, &eff, rows, cols)?;
            state.borrow_mut().finish(
                n.to_string(),
                m,
                LayerReport {
                    name: n.to_string(),
                    rel_error: Some(err),
                    seconds: share + t0.elapsed().as_secs_f64(),
                },
            );
            out.push(eff);
        }
    }
    Ok(out)
}

/// A gated SiLU MLP (`down(silu(gate x) ⊙ up x)`, the LLaMA family's) around a gate/up input
/// group, on a sample of its inputs, with the float output to compare candidates against.
struct MlpInspect {
    x: Tensor,
    /// Position of the gate and the up projection in the group.
    gate: usize,
    up: usize,
    rows: usize,
    cols: usize,
    down: Tensor,
    want: Vec<f32>,
}

/// At most this many input rows for the MLP loss (evenly spaced over the calibration tokens).
const MLP_SAMPLE_ROWS: usize = 1024;

fn mlp_of(
    g: &InputGroup,
    weights: &BTreeMap<String, (Vec<f32>, usize, usize)>,
) -> Option<MlpInspect> {
    let names: Vec<&str> = g.linears.iter().map(|(n, _)| &**n).collect();
    let gate = names.iter().position(|n| n.ends_with("mlp.gate_proj"))?;
    let up = names.iter().position(|n| n.ends_with("mlp.up_proj"))?;
    let down = format!("{}.down_proj", names[gate].strip_suffix(".gate_proj")?);
    let (dw, drows, dcols) = weights.get(&down)?;
    let (_, rows, cols) = weights.get(names[gate])?;
    if *dcols != *rows || weights.get(names[up])?.1 != *rows {
        return None;
    }
    let x = sample_rows(&g.x, g.n_rows, g.cols, MLP_SAMPLE_ROWS).ok()?;
    let down = Tensor::from_vec(dw.clone(), [*drows, *dcols]).ok()?;
    let mut m = MlpInspect {
        x,
        gate,
        up,
        rows: *rows,
        cols: *cols,
        down,
        want: Vec::new(),
    };
    let float: Vec<Vec<f32>> = names.iter().map(|n| weights[*n].0.clone()).collect();
    m.want = m.forward(&float).ok()?;
    Some(m)
}

impl MlpInspect {
    fn forward(&self, ws: &[Vec<f32>]) -> Result<Vec<f32>> {
        let t = |i: usize| Tensor::from_vec(ws[i].clone(), [self.rows, self.cols]);
        let g = self.x.matmul_t(&t(self.gate)?)?.into_f32_vec();
        let u = self.x.matmul_t(&t(self.up)?)?.into_f32_vec();
        let h: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let n = h.len() / self.rows;
        let h = Tensor::from_vec(h, [n, self.rows])?;
        Ok(h.matmul_t(&self.down)?.into_f32_vec())
    }

    /// Mean squared error of the MLP's output with the gate/up weights `eff`.
    fn loss(&self, eff: &[Vec<f32>]) -> Result<f64> {
        let y = self.forward(eff)?;
        let sq: f64 = y
            .iter()
            .zip(&self.want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        Ok(sq / y.len().max(1) as f64)
    }
}
