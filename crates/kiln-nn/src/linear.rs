//! `Linear`: `y = x · Wᵀ + b`, with W dense (gemm) or quantized (kiln-quant kernels).
//! This is the only place a model's matmuls meet a storage format.

use kiln_quant::QMatrix;
use kiln_tensor::Tensor;

use crate::weights::{Param, Weights};
use crate::Result;

#[derive(Clone)]
pub struct Linear {
    weight: Param,
    bias: Option<Tensor>,
    in_features: usize,
    out_features: usize,
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
        let w = w.pp(name);
        let weight = w.matrix("weight", out_features, in_features)?;
        let bias = if bias {
            Some(w.tensor("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            in_features,
            out_features,
        })
    }

    /// A dense projection from a `(out, in)` weight and an optional `(out,)` bias built at load
    /// time (a transposed or split checkpoint tensor, see `fused.rs`).
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
            weight: Param::Dense(weight),
            bias,
            in_features,
            out_features,
        })
    }

    /// A bias-free projection sharing an existing matrix (tied embeddings).
    pub fn from_param(weight: Param) -> Linear {
        let d = weight.dims();
        Linear {
            weight,
            bias: None,
            in_features: d[1],
            out_features: d[0],
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x (n_tokens, in) -> (n_tokens, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, _) = x.dims2("linear")?;
        let y = match &self.weight {
            Param::Dense(w) => x.matmul_t(w)?,
            Param::Quant(q) => {
                let x = x.to_f32();
                let mut out = vec![0.0f32; n * self.out_features];
                q.matmul(x.as_f32_slice()?, n, &mut out)?;
                Tensor::from_vec(out, [n, self.out_features])?
            }
        };
        debug_assert_eq!(x.dims()[1], self.in_features);
        self.add_bias(y)
    }

    /// Several projections of one input (a layer's q/k/v, gate/up). Quantized weights run as
    /// one kiln-quant call (`QMatrix::matmul_many`: the input is quantized once, one parallel
    /// region); results are the same as [`forward`](Self::forward) each.
    pub fn forward_many<const N: usize>(ls: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let quant: Option<Vec<&QMatrix>> = ls
            .iter()
            .map(|l| match &l.weight {
                Param::Quant(q) => Some(q),
                Param::Dense(_) => None,
            })
            .collect();
        let ys: Vec<Tensor> = match quant {
            Some(mats) => {
                let (n, _) = x.dims2("linear")?;
                let x = x.to_f32();
                let mut outs: Vec<Vec<f32>> = ls
                    .iter()
                    .map(|l| vec![0.0f32; n * l.out_features])
                    .collect();
                let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                QMatrix::matmul_many(&mats, x.as_f32_slice()?, n, &mut slices)?;
                ls.iter()
                    .zip(outs)
                    .map(|(l, y)| l.add_bias(Tensor::from_vec(y, [n, l.out_features])?))
                    .collect::<Result<_>>()?
            }
            None => ls.iter().map(|l| l.forward(x)).collect::<Result<_>>()?,
        };
        Ok(ys.try_into().expect("one output per projection"))
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(y.add(b)?),
            None => Ok(y),
        }
    }
}
