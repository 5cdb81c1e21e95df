//! The ops a backend implements, as enums: the backend trait takes these instead of growing one
//! method per op (STYLE.md: no trait zoo), and `supports(op, dtype)` answers per op and dtype.

use crate::DType;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Silu,
    /// GELU with the exact erf (`nn.GELU()`, BERT's `gelu`).
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
    Tanh,
    /// `x * alpha`.
    Scale(f32),
}

impl UnaryOp {
    /// The scalar definition every backend is tested against.
    pub fn eval(self, x: f32) -> f32 {
        use crate::cpu::activation as a;
        match self {
            UnaryOp::Silu => a::silu(x),
            UnaryOp::Gelu => a::gelu_erf(x),
            UnaryOp::GeluTanh => a::gelu_tanh(x),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Scale(s) => x * s,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Scale(_) => "scale",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Mul,
}

impl BinaryOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Mul => "mul",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormOp {
    Rms,
    Layer,
}

/// Rotary pairing: `Half` pairs element i with i + rot/2 (HF rotate_half), `Interleaved` pairs
/// 2i with 2i+1 (GPT-J, llama.cpp's GGUF rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Half,
    Interleaved,
}

/// Every op kind, for [`supports`](crate::Tensor::supports) and error messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Matmul,
    /// `x · Wᵀ` with W in a block format ([`DType::Quant`]); `supports` is asked with W's dtype.
    QMatmul,
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `act(gate) * up`, the gated MLP's hidden state.
    Gated(UnaryOp),
    Norm(NormOp),
    Rope,
    Softmax,
    Gather,
    /// Weighted sums of gathered rows (a mixture-of-experts layer's combine).
    CombineRows,
    /// Attention of packed queries over keys/values addressed through block tables (prefill,
    /// decode and encoder attention are all this op with different tables).
    Attention,
    /// Writes a step's keys/values into paged blocks through a slot mapping.
    KvWrite,
    Copy,
    Cast(DType),
}

impl Op {
    pub fn name(&self) -> String {
        match self {
            Op::Matmul => "matmul".into(),
            Op::QMatmul => "quantized matmul".into(),
            Op::Unary(u) => u.name().into(),
            Op::Binary(b) => b.name().into(),
            Op::Gated(u) => format!("gated_{}", u.name()),
            Op::Norm(NormOp::Rms) => "rms_norm".into(),
            Op::Norm(NormOp::Layer) => "layer_norm".into(),
            Op::Rope => "rope".into(),
            Op::Softmax => "softmax".into(),
            Op::Gather => "gather".into(),
            Op::CombineRows => "combine_rows".into(),
            Op::Attention => "attention".into(),
            Op::KvWrite => "kv_write".into(),
            Op::Copy => "copy".into(),
            Op::Cast(d) => format!("cast to {d:?}"),
        }
    }
}
