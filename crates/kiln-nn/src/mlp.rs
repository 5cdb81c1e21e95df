//! Feed-forward blocks: the gated MLP of LLaMA-style blocks, `down(act(gate(x)) * up(x))`
//! (SwiGLU with SiLU; T5 v1.1's gated GELU), and the plain `down(act(up(x)))` of the original
//! Transformer (T5 v1.0, BART, Marian).

use kiln_tensor::{Tensor, UnaryOp};

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

    /// The elementwise op this activation is.
    pub fn op(self) -> UnaryOp {
        match self {
            Activation::Silu => UnaryOp::Silu,
            Activation::Gelu => UnaryOp::Gelu,
            Activation::GeluTanh => UnaryOp::GeluTanh,
            Activation::Relu => UnaryOp::Relu,
        }
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(x.unary(self.op())?)
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

    /// From projections loaded under other names (T5's `wi_0`, `wi_1`, `wo`).
    pub fn from_parts(
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
        act: Activation,
    ) -> GatedMlp {
        GatedMlp {
            gate_proj,
            up_proj,
            down_proj,
            act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = Linear::forward_many([&self.gate_proj, &self.up_proj], x)?;
        self.down_proj.forward(&gate.gated(self.act.op(), &up)?)
    }
}

/// The ungated feed-forward block: `down(act(up(x)))`.
#[derive(Clone)]
pub struct Mlp {
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    /// From the checkpoint's two projections (T5 `wi`/`wo`, BART `fc1`/`fc2`).
    pub fn from_parts(up: Linear, down: Linear, act: Activation) -> Mlp {
        Mlp { up, down, act }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&self.act.apply(&self.up.forward(x)?)?)
    }
}
