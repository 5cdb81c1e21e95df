//! RMSNorm and LayerNorm layers (the kernels live in kiln-tensor).

use kiln_tensor::Tensor;

use crate::weights::Weights;
use crate::Result;

#[derive(Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: w.pp(name).tensor("weight", &[dim])?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.rms_norm(&self.weight, self.eps)?)
    }
}

#[derive(Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f32,
}

impl LayerNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f32, bias: bool) -> Result<LayerNorm> {
        let w = w.pp(name);
        let bias = if bias {
            Some(w.tensor("bias", &[dim])?)
        } else {
            None
        };
        Ok(LayerNorm {
            weight: w.tensor("weight", &[dim])?,
            bias,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.layer_norm(&self.weight, self.bias.as_ref(), self.eps)?)
    }

    /// Post-norm residual: `LayerNorm(x + y)` (one pass on the CPU; `x`'s buffer is reused
    /// when unshared).
    pub fn forward_residual(&self, x: Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(x.add_layer_norm(y, &self.weight, self.bias.as_ref(), self.eps)?)
    }
}
