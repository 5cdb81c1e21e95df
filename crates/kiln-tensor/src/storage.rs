//! Where a tensor's elements live: host vectors, or a CUDA device buffer.
//!
//! `Storage` is a closed enum dispatched by exhaustive `match` (STYLE.md): a build without the
//! `cuda` feature still has the `Cuda` arm, over an uninhabited type, so every match is written
//! once for both builds.

use half::{bf16, f16};
use kiln_quant::QMatrix;

use crate::cuda::CudaStorage;
use crate::{DType, Device, QuantType};

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Host storage, one vector per element type, or a quantized matrix: GGUF blocks (often a
/// window into a memory-mapped file) with kiln-quant's kernels.
#[derive(Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
    /// The block format (one of those kiln-quant's `QMatrix` accepts) and the matrix.
    Quant(QuantType, QMatrix),
}

impl CpuStorage {
    pub(crate) fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
            CpuStorage::Quant(_, q) => q.rows() * q.cols(),
        }
    }
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::Quant(t, _) => DType::Quant(*t),
        }
    }
    /// Element `i` widened to f32 (u32 converted by value; a quantized element decoded from its
    /// row, which is slow: `Tensor::try_to_vec_f32` decodes whole matrices).
    pub(crate) fn get_f32(&self, i: usize) -> f32 {
        match self {
            CpuStorage::F32(v) => v[i],
            CpuStorage::F16(v) => v[i].to_f32(),
            CpuStorage::BF16(v) => v[i].to_f32(),
            CpuStorage::U32(v) => v[i] as f32,
            CpuStorage::Quant(_, q) => {
                let (row, col) = (i / q.cols(), i % q.cols());
                let mut out = vec![0f32; q.cols()];
                // A row inside the matrix always decodes; NaN would only flag a broken invariant.
                match q.dequantize_row(row, &mut out) {
                    Ok(()) => out[col],
                    Err(_) => f32::NAN,
                }
            }
        }
    }
    /// The elements at `idx`, in order, as a new storage of the same dtype (a quantized matrix
    /// is always contiguous, see `Tensor::narrow`, so it only meets whole-storage selections).
    pub(crate) fn select(&self, idx: impl Iterator<Item = usize>) -> CpuStorage {
        match self {
            CpuStorage::F32(v) => CpuStorage::F32(idx.map(|i| v[i]).collect()),
            CpuStorage::F16(v) => CpuStorage::F16(idx.map(|i| v[i]).collect()),
            CpuStorage::BF16(v) => CpuStorage::BF16(idx.map(|i| v[i]).collect()),
            CpuStorage::U32(v) => CpuStorage::U32(idx.map(|i| v[i]).collect()),
            CpuStorage::Quant(t, q) => CpuStorage::Quant(*t, q.clone()),
        }
    }
    /// Converts f32 values to a plain `dtype` (u32 rounds to the nearest integer, saturating);
    /// block formats are made by `Tensor::to_dtype`, which knows the matrix shape.
    pub(crate) fn from_f32(data: Vec<f32>, dtype: DType) -> CpuStorage {
        match dtype {
            DType::F32 | DType::Quant(_) => CpuStorage::F32(data),
            DType::F16 => CpuStorage::F16(data.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => CpuStorage::BF16(data.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::U32 => CpuStorage::U32(data.iter().map(|&x| x.round() as u32).collect()),
        }
    }
}

impl Storage {
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    pub(crate) fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }
}
