//! kiln-tensor: tensors, shapes, dtypes and the CPU backend.
//!
//! A [`Tensor`] is a reference-counted storage plus a [`Layout`] (shape, strides, offset), so
//! views (`narrow`, `transpose`, `reshape` of contiguous data) never copy. Compute on the CPU runs
//! in f32: f16/bf16 tensors are widened once per op (weights are converted at load time), which
//! keeps every kernel single-typed; the alternative — generic kernels per dtype — triples the
//! kernel code for no gain on CPUs without native half arithmetic.
//!
//! Invariants: a tensor's layout always fits its storage (checked at construction); ops return
//! contiguous tensors; `unsafe` appears only in `cpu/matmul.rs` (the gemm call).

mod dtype;
mod error;
mod layout;
mod tensor;

pub mod cpu;

pub use dtype::DType;
pub use error::{Error, Result};
pub use layout::{Layout, Shape};
pub use tensor::{Device, Storage, Tensor};
