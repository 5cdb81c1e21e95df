//! Rotary position embeddings and their long-context scalings, as Hugging Face transformers
//! computes them (`modeling_rope_utils.py`): default, linear, dynamic NTK, YaRN and llama3.
//!
//! Configs come in two spellings: transformers 4.x (`rope_theta` plus `rope_scaling` with `type`
//! or `rope_type`) and 5.x (`rope_parameters` holding `rope_theta` and `rope_type`); both parse to
//! the same [`Rope`]. Frequencies are computed in f32 as torch does, so long positions agree.

use std::borrow::Cow;
use std::sync::OnceLock;

use kiln_tensor::host_kv::apply_rope;
use kiln_tensor::RopeStyle;
use kiln_tensor::{DType, Device, Tensor};
use serde_json::Value;

use crate::{Batch, Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    /// Dynamic NTK: the base grows with the sequence length past `max_position_embeddings`.
    Dynamic {
        factor: f32,
        max_position_embeddings: usize,
    },
    Yarn {
        inv_freq: Vec<f32>,
        attention_factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Rope {
    theta: f32,
    /// Rotated dimensions per head (head_dim × partial_rotary_factor).
    dim: usize,
    scaling: RopeScaling,
    style: RopeStyle,
    inv_freq: Vec<f32>,
    mscale: f32,
    /// `inv_freq` on the device that first asked (uploaded once, not per call: a host-to-device
    /// copy from pageable memory waits for the stream, which would stall every layer).
    inv_freq_on: OnceLock<Tensor>,
}

fn base_inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / dim as f32))
        .collect()
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}

impl Rope {
    pub fn new(theta: f32, dim: usize, scaling: RopeScaling, style: RopeStyle) -> Rope {
        let base = base_inv_freq(theta, dim);
        let (inv_freq, mscale) = match &scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => (base, 1.0),
            RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Yarn {
                inv_freq,
                attention_factor,
            } => (inv_freq.clone(), *attention_factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => (
                llama3_inv_freq(
                    &base,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max,
                ),
                1.0,
            ),
        };
        Rope {
            theta,
            dim,
            scaling,
            style,
            inv_freq,
            mscale,
            inv_freq_on: OnceLock::new(),
        }
    }

    /// Reads a Hugging Face config.json (either spelling). `style` is `Half` for HF checkpoints and
    /// `Interleaved` for GGUF ones (llama.cpp permutes q/k rows at conversion).
    pub fn from_hf_config(cfg: &Value, head_dim: usize, style: RopeStyle) -> Result<Rope> {
        let params = cfg.get("rope_parameters").filter(|v| v.is_object());
        let legacy = cfg.get("rope_scaling").filter(|v| v.is_object());
        let theta = params
            .and_then(|p| num(p, "rope_theta"))
            .or_else(|| num(cfg, "rope_theta"))
            .unwrap_or(10000.0) as f32;
        let partial = params
            .and_then(|p| num(p, "partial_rotary_factor"))
            .or_else(|| num(cfg, "partial_rotary_factor"))
            .unwrap_or(1.0);
        let dim = ((head_dim as f64 * partial) as usize) & !1;
        let max_pos = num(cfg, "max_position_embeddings").unwrap_or(2048.0) as usize;
        let scaling = match params.or(legacy) {
            None => RopeScaling::None,
            Some(s) => parse_scaling(s, theta, dim, max_pos)?,
        };
        Ok(Rope::new(theta, dim, scaling, style))
    }

    pub fn scaling(&self) -> &RopeScaling {
        &self.scaling
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// The frequencies and cos/sin scale for a step reaching `max_pos` (dynamic NTK grows its
    /// base with the sequence; every other scaling is fixed at construction).
    fn freqs(&self, positions: &[usize]) -> (Cow<'_, [f32]>, f32) {
        match &self.scaling {
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => {
                let seq_len = positions
                    .iter()
                    .max()
                    .map_or(0, |p| p + 1)
                    .max(*max_position_embeddings);
                let d = self.dim as f32;
                let base = self.theta
                    * ((factor * seq_len as f32 / *max_position_embeddings as f32)
                        - (factor - 1.0))
                        .powf(d / (d - 2.0));
                (base_inv_freq(base, self.dim).into(), 1.0)
            }
            _ => (Cow::Borrowed(&self.inv_freq[..]), self.mscale),
        }
    }

    /// Rotates `x (n_tokens, n_heads, head_dim)` in place for the given positions.
    fn apply_host(&self, x: &mut [f32], n_heads: usize, head_dim: usize, positions: &[usize]) {
        let (inv, mscale) = self.freqs(positions);
        apply_rope(x, n_heads, head_dim, positions, &inv, mscale, self.style);
    }

    /// Rotates `x (n_tokens, n_heads · head_dim)` at the step's positions, on `x`'s device (the
    /// step's positions are uploaded once, [`Batch::positions_on`]).
    pub fn forward(&self, x: Tensor, n_heads: usize, batch: &Batch) -> Result<Tensor> {
        let device = x.device();
        if device == Device::Cpu && x.dtype() == DType::F32 {
            // The CPU engine's path: in place on the (unshared) buffer, no position tensor.
            let shape = x.shape().clone();
            let head_dim = x.elem_count() / (batch.n_tokens() * n_heads).max(1);
            let mut data = x.into_f32_vec();
            self.apply_host(&mut data, n_heads, head_dim, &batch.positions);
            return Ok(Tensor::from_vec(data, shape)?);
        }
        let (inv, mscale) = self.freqs(&batch.positions);
        let inv = match inv {
            // Fixed frequencies: one upload for the model's life.
            Cow::Borrowed(_) => match self.inv_freq_on.get().filter(|t| t.device() == device) {
                Some(t) => t.clone(),
                None => {
                    let t = Tensor::from_vec(self.inv_freq.clone(), [self.dim / 2])?
                        .to_device(device)?;
                    let _ = self.inv_freq_on.set(t.clone());
                    t
                }
            },
            // Dynamic NTK: this step's frequencies.
            Cow::Owned(v) => Tensor::from_vec(v, [self.dim / 2])?.to_device(device)?,
        };
        let positions = batch.positions_on(device)?;
        Ok(x.rope(n_heads, &positions, &inv, mscale, self.style)?)
    }
}

fn parse_scaling(s: &Value, theta: f32, dim: usize, max_pos: usize) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let factor = num(s, "factor");
    let need = |f: Option<f64>, what: &str| {
        f.map(|x| x as f32)
            .ok_or_else(|| Error::Config(format!("rope scaling `{kind}` needs `{what}`")))
    };
    let original = num(s, "original_max_position_embeddings").map(|x| x as usize);
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need(factor, "factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need(factor, "factor")?,
            max_position_embeddings: max_pos,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need(factor, "factor")?,
            low_freq_factor: need(num(s, "low_freq_factor"), "low_freq_factor")?,
            high_freq_factor: need(num(s, "high_freq_factor"), "high_freq_factor")?,
            original_max: original.ok_or_else(|| {
                Error::Config("llama3 rope needs original_max_position_embeddings".into())
            })?,
        },
        "yarn" => {
            let original_max = original.unwrap_or(max_pos);
            // transformers: without a `factor`, the ratio of the two lengths is the factor.
            let factor = factor.map_or(max_pos as f32 / original_max as f32, |f| f as f32);
            yarn(s, theta, dim, factor, original_max)
        }
        other => return Err(Error::Config(format!("unsupported rope type `{other}`"))),
    })
}

fn llama3_inv_freq(
    base: &[f32],
    factor: f32,
    low: f32,
    high: f32,
    original_max: usize,
) -> Vec<f32> {
    let old = original_max as f32;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

fn yarn(s: &Value, theta: f32, dim: usize, factor: f32, original_max: usize) -> RopeScaling {
    let get_mscale = |scale: f32, m: f32| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attention_factor = match (
        num(s, "attention_factor"),
        num(s, "mscale"),
        num(s, "mscale_all_dim"),
    ) {
        (Some(a), _, _) => a as f32,
        (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
            get_mscale(factor, m as f32) / get_mscale(factor, ma as f32)
        }
        _ => get_mscale(factor, 1.0),
    };
    let beta_fast = num(s, "beta_fast").unwrap_or(32.0) as f32;
    let beta_slow = num(s, "beta_slow").unwrap_or(1.0) as f32;
    let truncate = s.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true);
    let d = dim as f32;
    let correction_dim = |rot: f32| {
        (d * (original_max as f32 / (rot * 2.0 * std::f32::consts::PI)).ln()) / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let (low, high) = (low.max(0.0), high.min(d - 1.0));
    let high = if low == high { high + 0.001 } else { high };
    let inv_freq = (0..dim / 2)
        .map(|i| {
            let pos_freq = theta.powf((2 * i) as f32 / d);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    RopeScaling::Yarn {
        inv_freq,
        attention_factor,
    }
}
