//! `Linear`: `y = x · Wᵀ + b`, with W dense or in a block format: the weight's dtype picks the
//! backend's matmul or quantized matmul (`Tensor::matmul_t`). This is the only place a model's
//! matmuls meet a storage format. LLM.int8 (`--quantize llm-int8`, kiln-quant `llm_int8.rs`)
//! is a weight of its own: int8 rows whose matmul picks the outlier columns of each step, on
//! the host.

use std::sync::Arc;

use kiln_tensor::Tensor;

use kiln_quant::Int8Rows;

use crate::load_quant::LoadQuant;
use crate::weights::{matrix_of, read_int, Weights};
use crate::Result;

#[derive(Clone)]
pub struct Linear {
    /// The weight as a tensor; for LLM.int8 an empty host placeholder (see `int8`).
    weight: Tensor,
    /// LLM.int8's int8 rows and outlier threshold, when the linear loaded that way.
    int8: Option<Arc<(Int8Rows, Option<f32>)>>,
    bias: Option<Tensor>,
    in_features: usize,
    out_features: usize,
    /// The checkpoint name (`model.layers.0.self_attn.q_proj`) of a linear loaded by name:
    /// what calibration (`calibrate.rs`) and an export address it by.
    name: Option<Arc<str>>,
}

impl Linear {
    /// Loads `{name}.weight` (out, in) and, when `bias`, `{name}.bias` (out,).
    pub fn load(
        w: &Weights,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        let full: Arc<str> = w.name_of(name).into();
        w.note_linear(&full);
        let quantized = match w.checkpoint_quant() {
            Some(q) => read_int(w, &q, name, out_features, in_features)?,
            None => None,
        };
        let int8 = match (&quantized, w.placement().quantize) {
            (None, Some(LoadQuant::LlmInt8 { threshold })) => {
                crate::load_quant::llm_int8(w, name, out_features, in_features)?
                    .map(|rows| Arc::new((rows, threshold.get())))
            }
            _ => None,
        };
        let weight = match (quantized, &int8) {
            (Some(m), _) => w.placement().matrix(matrix_of(&m)?)?,
            (None, Some(_)) => Tensor::from_vec(Vec::new(), [0, 0])?,
            (None, None) => w.linear_weight(name, out_features, in_features)?,
        };
        let w = w.pp(name);
        let bias = if bias {
            Some(w.tensor("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            int8,
            bias,
            in_features,
            out_features,
            name: Some(full),
        })
    }

    /// A projection from a `(out, in)` weight (dense, or quantized when there is no bias to
    /// check) and an optional `(out,)` bias built at load time (a transposed or split
    /// checkpoint tensor, see `fused.rs`; one expert of a stacked tensor, `moe.rs`).
    pub fn from_dense(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let (out_features, in_features) = weight.dims2("Linear::from_dense")?;
        if let Some(b) = &bias {
            if b.dims() != [out_features] {
                return Err(kiln_tensor::Error::ShapeMismatch {
                    op: "Linear::from_dense (bias)",
                    lhs: vec![out_features],
                    rhs: b.dims().to_vec(),
                }
                .into());
            }
        }
        Ok(Linear {
            weight,
            int8: None,
            bias,
            in_features,
            out_features,
            name: None,
        })
    }

    /// A bias-free projection sharing an existing `(out, in)` matrix, dense or quantized (tied
    /// embeddings).
    pub fn tied(weight: Tensor) -> Linear {
        let d = weight.dims().to_vec();
        Linear {
            weight,
            int8: None,
            bias: None,
            in_features: d[1],
            out_features: d[0],
            name: None,
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The checkpoint name, for a linear loaded by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `x (n_tokens, in) -> (n_tokens, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        debug_assert_eq!(x.dims().get(1), Some(&self.in_features));
        if let Some(q) = &self.int8 {
            return self.add_bias(int8_forward(q, x)?);
        }
        if let Some(mut w) = crate::calibrate::observe(&[(self.name.as_ref(), &self.weight)], x)? {
            if let Some(w) = w.pop().flatten() {
                return self.add_bias(x.matmul_t(&w)?);
            }
        }
        self.add_bias(x.matmul_t(&self.weight)?)
    }

    /// Several projections of one input (a layer's q/k/v, gate/up): quantized weights run as
    /// one quantized-matmul call (`Tensor::matmul_t_many`: on the CPU the input is quantized
    /// once, one parallel region); results are the same as [`forward`](Self::forward) each.
    pub fn forward_many<const N: usize>(ls: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        if ls.iter().any(|l| l.int8.is_some()) {
            let mut out = Vec::with_capacity(N);
            for l in ls {
                out.push(l.forward(x)?);
            }
            return Ok(out.try_into().expect("one output per projection"));
        }
        let named = ls.map(|l| (l.name.as_ref(), &l.weight));
        let ys = match crate::calibrate::observe(&named, x)? {
            Some(over) if over.iter().any(Option::is_some) => {
                let ws: Vec<Tensor> = over
                    .into_iter()
                    .zip(ls)
                    .map(|(o, l)| o.unwrap_or_else(|| l.weight.clone()))
                    .collect();
                let ws: [&Tensor; N] = std::array::from_fn(|i| &ws[i]);
                x.matmul_t_many(ws)?
            }
            _ => x.matmul_t_many(ls.map(|l| &l.weight))?,
        };
        let mut out = Vec::with_capacity(N);
        for (l, y) in ls.iter().zip(ys) {
            out.push(l.add_bias(y)?);
        }
        Ok(out.try_into().expect("one output per projection"))
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(y.add(b)?),
            None => Ok(y),
        }
    }
}

/// LLM.int8's matmul of a host `x (n, in)` (kiln-quant `llm_int8.rs`).
fn int8_forward(q: &(Int8Rows, Option<f32>), x: &Tensor) -> Result<Tensor> {
    let (w, threshold) = q;
    let (n, _) = x.dims2("LLM.int8 input")?;
    if x.device() != kiln_tensor::Device::Cpu {
        return Err(crate::Error::Config(
            "LLM.int8 runs on the CPU (--quantize llm-int8 without --device)".into(),
        ));
    }
    let xs = x.try_to_vec_f32()?;
    let mut y = vec![0.0f32; n * w.rows];
    w.matmul(&xs, n, *threshold, &mut y)?;
    Ok(Tensor::from_vec(y, [n, w.rows])?)
}
