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
//! bf16 are native storage types and kernels accumulate in f32.
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

pub use attn::{AttnArgs, AttnMeta, HostMeta, KvLayout, RelBias};
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use layout::{Layout, Shape};
pub use op::{BinaryOp, NormOp, Op, RopeStyle, UnaryOp};
pub use storage::{CpuStorage, Storage};
pub use tensor::Tensor;
