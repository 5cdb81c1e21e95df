//! The MLPs of transformer blocks: the gated one of LLaMA-style blocks,
//! `down(act(gate(x)) * up(x))` (SwiGLU with SiLU), and the plain two-layer one of GPT-2 and
//! BLOOM, `proj(act(fc(x)))`.

use kiln_tensor::Tensor;

use crate::weights::Weights;
use crate::{Error, Linear, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    /// Parses config.json's `hidden_act` / `hidden_activation`.
    pub fn parse(name: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::Config(format!("unsupported activation `{other}`"))),
        }
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu(),
            Activation::GeluTanh => x.gelu_tanh(),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Clone)]
pub struct GatedMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn load(
        w: &Weights,
        hidden: usize,
        intermediate: usize,
        act: Activation,
        bias: bool,
    ) -> Result<GatedMlp> {
        Ok(GatedMlp {
            gate_proj: Linear::load(w, "gate_proj", hidden, intermediate, bias)?,
            up_proj: Linear::load(w, "up_proj", hidden, intermediate, bias)?,
            down_proj: Linear::load(w, "down_proj", intermediate, hidden, bias)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.act.apply(&self.gate_proj.forward(x)?);
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&gate.mul(&up)?)
    }
}

/// The plain feed-forward block `proj(act(fc(x)))`; the model names its two projections
/// (GPT-2 `c_fc`/`c_proj`, BLOOM `dense_h_to_4h`/`dense_4h_to_h`).
#[derive(Clone)]
pub struct Mlp {
    fc: Linear,
    proj: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(fc: Linear, proj: Linear, act: Activation) -> Mlp {
        Mlp { fc, proj, act }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.act.apply(&self.fc.forward(x)?))
    }
}
