//! `Linear`: `y = x · Wᵀ + b`, with W dense (gemm) or quantized (kiln-quant kernels).
//! This is the only place a model's matmuls meet a storage format.

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
    pub fn load(w: &Weights, name: &str, in_features: usize, out_features: usize, bias: bool) -> Result<Linear> {
        let w = w.pp(name);
        let weight = w.matrix("weight", out_features, in_features)?;
        let bias = if bias { Some(w.tensor("bias", &[out_features])?) } else { None };
        Ok(Linear { weight, bias, in_features, out_features })
    }

    /// A bias-free projection sharing an existing matrix (tied embeddings).
    pub fn from_param(weight: Param) -> Linear {
        let d = weight.dims();
        Linear { weight, bias: None, in_features: d[1], out_features: d[0] }
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
        match &self.bias {
            Some(b) => Ok(y.add(b)?),
            None => Ok(y),
        }
    }
}
