//! Feed-forward blocks: the gated MLP of LLaMA-style blocks, `down(act(gate(x)) * up(x))`
//! (SwiGLU with SiLU; T5 v1.1's gated GELU), and the plain `down(act(up(x)))` of the original
//! Transformer (T5 v1.0, BART, Marian).

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

    /// `gate[i] = act(gate[i]) * up[i]` in place (each arm monomorphises the kernel, so the
    /// activation inlines).
    pub fn apply_gated(self, gate: &mut [f32], up: &[f32]) {
        use kiln_tensor::cpu::activation as a;
        use kiln_tensor::cpu::elementwise::gated_in_place;
        match self {
            Activation::Silu => gated_in_place(gate, up, a::silu),
            Activation::Gelu => gated_in_place(gate, up, a::gelu_erf),
            Activation::GeluTanh => gated_in_place(gate, up, a::gelu_tanh),
            Activation::Relu => gated_in_place(gate, up, |x| x.max(0.0)),
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
        let shape = gate.dims().to_vec();
        let mut h = gate.into_f32_vec();
        let up = up.to_f32();
        self.act.apply_gated(&mut h, up.as_f32_slice()?);
        self.down_proj.forward(&Tensor::from_vec(h, shape)?)
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
        self.down.forward(&self.act.apply(&self.up.forward(x)?))
    }
}
