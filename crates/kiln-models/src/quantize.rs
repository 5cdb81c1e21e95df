//! Quantizing a loaded model's linears with kiln's own forward pass: round-to-nearest, or GPTQ
//! over calibration text, block by block (kiln-nn `calibrate.rs`: each block sees the inputs
//! the blocks already quantized produce). The result is an [`IntMatrix`] per linear, which
//! `export.rs` writes as a GPTQ/AWQ checkpoint and `Linear` loads back.
//!
//! Left as they are, as AutoGPTQ and AutoAWQ do: the embeddings and the LM head (not linears
//! loaded by name here), and MoE routers (`mlp.gate`, `shared_expert_gate`). A linear that no
//! calibration token reaches (an expert never routed to) is quantized by round-to-nearest.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use kiln_nn::calibrate::{self, FreshKv, InputGroup, Quantizer, Trial};
use kiln_nn::Batch;
use kiln_quant::gptq::{gptq, GptqConfig, Hessian};
use kiln_quant::{IntMatrix, IntSpec};
use kiln_tensor::{DType, Tensor};

use crate::registry::Loaded;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rtn,
    Gptq,
    /// AWQ's scale and clip search, then round-to-nearest of the scaled weights.
    Awq,
    /// AWQ's scales (folded as for [`Method::Awq`]), then GPTQ of the scaled weights on the
    /// scaled inputs, without the clip search (GPTQ fits its own grid): the two are
    /// orthogonal, as the AWQ paper shows.
    AwqGptq,
}

impl Method {
    /// Whether the method folds AWQ scales (and so quantizes a whole block at once).
    pub fn awq_scales(self) -> bool {
        matches!(self, Method::Awq | Method::AwqGptq)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub method: Method,
    pub spec: IntSpec,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal (with static groups).
    pub act_order: bool,
    /// GPTQ: dampening, a fraction of the mean Hessian diagonal.
    pub damp_percent: f64,
    /// Quantize a block's input groups one at a time, each on the inputs of the quantized ones
    /// before it (AutoGPTQ's `true_sequential`); otherwise a whole block from one pass.
    pub true_sequential: bool,
}

/// How one linear came out.
#[derive(Debug, Clone)]
pub struct LayerReport {
    pub name: String,
    /// `‖X(Ŵ − W)ᵀ‖ / ‖XWᵀ‖` over (up to 512 of) its calibration inputs; `None` without data.
    pub rel_error: Option<f64>,
    pub seconds: f64,
}

pub struct Quantization {
    pub linears: BTreeMap<String, IntMatrix>,
    pub reports: Vec<LayerReport>,
    /// AWQ: dense tensors (norm weights) to divide elementwise by these input scales when
    /// written, so that the scaled quantized linears after them compute the same function.
    pub dense_divisors: BTreeMap<String, Vec<f32>>,
}

/// Called after each linear with its report, the number done and the total.
pub type OnLayer = Box<dyn FnMut(&LayerReport, usize, usize)>;

/// Whether a linear stays in float (MoE routers and the LM head, as AutoGPTQ leaves them).
pub fn is_kept_float(name: &str) -> bool {
    name == "lm_head" || kiln_nn::load_quant::is_kept_float(name)
}

/// Quantizes `loaded`'s linears; `calib` holds token sequences (each from position 0) run
/// through the model as one packed batch (needed for GPTQ; optional for RTN, where it only
/// measures the error). `on_layer` is called after each linear with the number done and total.
pub fn quantize(
    loaded: &Loaded,
    calib: &[Vec<u32>],
    opts: &Options,
    on_layer: OnLayer,
) -> Result<Quantization> {
    let names: Vec<String> = loaded
        .weights
        .loaded_linears()
        .into_iter()
        .filter(|n| !is_kept_float(n))
        .collect();
    if names.is_empty() {
        return Err(Error::Quantize(format!(
            "{} has no linear layer kiln can quantize",
            loaded.info.architecture
        )));
    }
    if opts.method != Method::Rtn && calib.iter().all(|s| s.len() < 2) {
        return Err(Error::Quantize(
            "GPTQ and AWQ need calibration text (--calib FILE)".into(),
        ));
    }
    let state = Rc::new(RefCell::new(State {
        opts: opts.clone(),
        done: BTreeMap::new(),
        reports: Vec::new(),
        dense_divisors: BTreeMap::new(),
        total: names.len(),
        on_layer,
    }));
    let seqs: Vec<&Vec<u32>> = calib.iter().filter(|s| s.len() >= 2).collect();
    if !seqs.is_empty() {
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let batch = Batch::packed(&lens);
        let q = Box::new(Calibrated(state.clone()));
        let (r, _, _) = calibrate::run(q, || loaded.model.forward(&tokens, &batch, &mut FreshKv));
        r?;
    }
    // Whatever calibration did not reach: round to nearest, without data.
    for name in &names {
        if state.borrow().done.contains_key(name) {
            continue;
        }
        let t0 = Instant::now();
        let w = loaded.weights.read(&format!("{name}.weight"))?;
        let (rows, cols) = w.dims2("quantize")?;
        let m = IntMatrix::rtn(&host_f32(&w)?, rows, cols, opts.spec)?;
        state.borrow_mut().finish(
            name.clone(),
            m,
            LayerReport {
                name: name.clone(),
                rel_error: None,
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
    }
    let s = Rc::try_unwrap(state)
        .map_err(|_| Error::Quantize("the calibration state is still shared".into()))?
        .into_inner();
    Ok(Quantization {
        linears: s.done,
        reports: s.reports,
        dense_divisors: s.dense_divisors,
    })
}

pub(crate) struct State {
    pub(crate) opts: Options,
    done: BTreeMap<String, IntMatrix>,
    reports: Vec<LayerReport>,
    pub(crate) dense_divisors: BTreeMap<String, Vec<f32>>,
    total: usize,
    on_layer: OnLayer,
}

impl State {
    pub(crate) fn finish(&mut self, name: String, m: IntMatrix, report: LayerReport) {
        self.done.insert(name, m);
        (self.on_layer)(&report, self.done.len(), self.total);
        self.reports.push(report);
    }
}

/// The calibration session's quantizer (RTN or GPTQ per input group).
struct Calibrated(Rc<RefCell<State>>);

impl Quantizer for Calibrated {
    fn sequential(&self) -> bool {
        // AWQ folds a group's scales into the layer before it: it needs the whole block.
        let o = &self.0.borrow().opts;
        o.true_sequential && !o.method.awq_scales()
    }

    fn skip(&self, name: &str) -> bool {
        is_kept_float(name)
    }

    fn quantize(
        &mut self,
        groups: &[InputGroup],
        trial: &mut Trial<'_>,
    ) -> std::result::Result<Vec<Tensor>, kiln_nn::Error> {
        let err = |e: Error| kiln_nn::Error::Config(e.to_string());
        if self.0.borrow().opts.method.awq_scales() {
            return crate::quantize_awq::block(&self.0, groups, trial).map_err(err);
        }
        let mut out = Vec::new();
        for g in groups {
            out.extend(self.group(g).map_err(err)?);
        }
        Ok(out)
    }
}

impl Calibrated {
    fn group(&self, g: &InputGroup) -> Result<Vec<Tensor>> {
        let opts = self.0.borrow().opts.clone();
        let t0 = Instant::now();
        let hessian = match opts.method {
            Method::Gptq => {
                let mut h = Hessian::new(g.cols);
                h.add(&g.x, g.n_rows)?;
                Some(h)
            }
            Method::Rtn | Method::Awq | Method::AwqGptq => None,
        };
        let setup = t0.elapsed().as_secs_f64() / g.linears.len() as f64;
        let sample = sample_rows(&g.x, g.n_rows, g.cols, 512)?;
        let mut out = Vec::with_capacity(g.linears.len());
        for (name, w) in &g.linears {
            let t1 = Instant::now();
            let (rows, cols) = w.dims2("quantize")?;
            let wf = host_f32(w)?;
            let m = match &hessian {
                Some(h) => gptq(&wf, rows, cols, h, &gptq_config(&opts))?.m,
                None => IntMatrix::rtn(&wf, rows, cols, opts.spec)?,
            };
            let wq = Tensor::from_vec(m.dequantize(), [rows, cols])?;
            let rel_error = rel_error(&sample, &wf, &wq, rows, cols)?;
            self.0.borrow_mut().finish(
                name.to_string(),
                m,
                LayerReport {
                    name: name.to_string(),
                    rel_error: Some(rel_error),
                    seconds: setup + t1.elapsed().as_secs_f64(),
                },
            );
            out.push(wq);
        }
        Ok(out)
    }
}

/// GPTQ's settings from the options: lazy batches of 128 columns, act-order with static
/// groups.
pub(crate) fn gptq_config(opts: &Options) -> GptqConfig {
    GptqConfig {
        spec: opts.spec,
        damp_percent: opts.damp_percent,
        block_size: 128,
        act_order: opts.act_order,
        static_groups: opts.act_order,
    }
}

/// Up to `n` rows of `x` `(n_rows, cols)`, evenly spaced, as a tensor.
pub(crate) fn sample_rows(x: &[f32], n_rows: usize, cols: usize, n: usize) -> Result<Tensor> {
    let step = n_rows.div_ceil(n).max(1);
    let rows: Vec<f32> = (0..n_rows)
        .step_by(step)
        .flat_map(|r| x[r * cols..(r + 1) * cols].iter().copied())
        .collect();
    let k = rows.len() / cols.max(1);
    Ok(Tensor::from_vec(rows, [k, cols])?)
}

/// `‖X(Ŵ − W)ᵀ‖ / ‖XWᵀ‖`.
pub(crate) fn rel_error(
    x: &Tensor,
    w: &[f32],
    wq: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<f64> {
    let y = x.matmul_t(&Tensor::from_vec(w.to_vec(), [rows, cols])?)?;
    let yq = x.matmul_t(wq)?;
    let (y, yq) = (y.try_to_vec_f32()?, yq.try_to_vec_f32()?);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in y.iter().zip(&yq) {
        num += ((b - a) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
}

/// A weight as loaded (dense, or a GGUF block format) as host f32.
pub(crate) fn host_f32(w: &Tensor) -> Result<Vec<f32>> {
    let w = if w.dtype() == DType::F32 {
        w.clone()
    } else {
        w.to_dtype(DType::F32)?
    };
    Ok(w.try_to_vec_f32()?)
}
