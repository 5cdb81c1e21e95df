//! The one error type of kiln-tensor: every variant names the op and the shapes involved.

use crate::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {lhs:?} vs {rhs:?}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },
    #[error("{op}: expected rank {expected}, got shape {got:?}")]
    Rank {
        op: &'static str,
        expected: usize,
        got: Vec<usize>,
    },
    #[error("{op}: dimension {dim} out of range for shape {shape:?}")]
    Dim {
        op: &'static str,
        dim: usize,
        shape: Vec<usize>,
    },
    #[error("{op}: range {start}..{end} out of bounds for size {size}")]
    Range {
        op: &'static str,
        start: usize,
        end: usize,
        size: usize,
    },
    #[error("{op}: {len} elements do not fill shape {shape:?}")]
    ElementCount {
        op: &'static str,
        len: usize,
        shape: Vec<usize>,
    },
    #[error("{op}: unsupported dtype {dtype:?}")]
    DType { op: &'static str, dtype: DType },
    #[error("{op}: requires a contiguous tensor, got strides {strides:?} for shape {shape:?}")]
    NotContiguous {
        op: &'static str,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
    #[error("index {index} out of range for {op} with {size} rows")]
    Index {
        op: &'static str,
        index: usize,
        size: usize,
    },
    #[error("{op}: operands on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },
    #[error("{op} in {dtype} is not available on {device} yet")]
    Unsupported {
        op: String,
        dtype: DType,
        device: Device,
    },
    #[error("{op}: needs host memory, but the tensor is on {device}")]
    NotOnHost { op: &'static str, device: Device },
    #[error("{op}: {reason}")]
    Invalid { op: &'static str, reason: String },
    /// A quantized-matrix kernel refused its operands (sizes, block multiples).
    #[error(transparent)]
    Quant(#[from] kiln_quant::Error),
    /// A CUDA device could not be used or a CUDA call failed: the message says which.
    #[error("{0}")]
    Cuda(String),
}

pub type Result<T> = std::result::Result<T, Error>;
