//! kiln-tensor: tensors, shapes, dtypes, devices, and the backends under them.
//!
//! A [`Tensor`] is a reference-counted [`Storage`] plus a [`Layout`] (shape, strides, offset),
//! so views (`narrow`, `transpose`, `reshape` of contiguous data) never copy. Storage lives on a
//! [`Device`]: host vectors, or CUDA device memory (feature `cuda`). Ops dispatch on the
//! storage with an exhaustive `match` to one crate-private backend trait over op enums
//! (`backend.rs`, [`op`]); models and layers only call `Tensor` methods.
//!
//! On the CPU every op computes in f32: f16/bf16 tensors are widened once per op (weights are
//! converted at load time), which keeps every CPU kernel single-typed. On CUDA, f32, f16 and
//! bf16 are native storage types and kernels accumulate in f32. Quantized weight matrices are
//! storage dtypes too ([`DType::Quant`]: the GGUF block formats), read by the quantized matmul
//! ([`Tensor::matmul_t`]) and row gathers: kiln-quant's integer kernels on the CPU, a
//! dequantizing kernel on CUDA.
//!
//! Invariants: a tensor's layout always fits its storage (checked at construction); ops return
//! contiguous tensors; host copies of device data happen only through `to_device`/`to_vec_*`
//! (the edges); `unsafe` lives in kernels (gemm, SIMD, CUDA calls), each with `// SAFETY:`.

mod attn;
mod backend;
mod device;
mod dtype;
mod error;
mod layout;
pub mod op;
mod ops;
mod storage;
mod tensor;

pub mod cpu;
pub mod cuda;

/// The host kernels kiln-nn's CPU KV stores call in place (`KvCache`, `PagedKv` on the host:
/// attention read straight from their own buffers, RoPE in place): the one named seam to the
/// CPU kernels outside this crate. Everything else reaches them through `Tensor` ops.
pub mod host_kv {
    pub use crate::cpu::attention::{attention, AttnParams, RelativeBias, DECODE_MAX_QUERIES};
    pub use crate::cpu::paged_attention::{KvCacheDtype, PagedLayerKv, NO_BLOCK};
    pub use crate::cpu::rope::apply_rope;
}

pub use attn::{AttnArgs, AttnMeta, HostMeta, KvLayout, RelBias};
pub use device::Device;
pub use dtype::{DType, QuantType};
pub use error::{Error, Result};
pub use layout::{Layout, Shape};
pub use op::{BinaryOp, NormOp, Op, RopeStyle, UnaryOp};
pub use storage::{CpuStorage, Storage};
pub use tensor::Tensor;
