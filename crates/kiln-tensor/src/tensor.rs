//! The `Tensor` type: shared storage + layout, cheap views, host access at the edges.
//!
//! Ops (in `ops.rs`) dispatch on the storage's device with an exhaustive `match` to a backend
//! (`backend.rs`); this file holds what does not compute: construction, views, moves between
//! devices and the host copies that the edges (sampled ids, outputs, tests) need.

use std::sync::Arc;

use half::{bf16, f16};
use kiln_quant::QMatrix;

use crate::storage::CpuStorage;
use crate::{cuda, DType, Device, Error, Layout, QuantType, Result, Shape, Storage};

#[derive(Debug, Clone)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: Shape) -> Result<Tensor> {
        if storage.len() != shape.elem_count() {
            return Err(Error::ElementCount {
                op: "new",
                len: storage.len(),
                shape: shape.0,
            });
        }
        Ok(Tensor {
            storage: Arc::new(storage),
            layout: Layout::contiguous(shape),
        })
    }

    fn cpu(storage: CpuStorage, shape: Shape) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(storage), shape)
    }

    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::cpu(CpuStorage::F32(data), shape.into())
    }
    pub fn from_f16(data: Vec<f16>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::cpu(CpuStorage::F16(data), shape.into())
    }
    pub fn from_bf16(data: Vec<bf16>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::cpu(CpuStorage::BF16(data), shape.into())
    }
    /// Integers (ids, positions, block tables) as a host tensor.
    pub fn from_u32(data: Vec<u32>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::cpu(CpuStorage::U32(data), shape.into())
    }
    /// A quantized `(rows, cols)` matrix in a block format kiln has kernels for (a GGUF tensor,
    /// usually over the memory-mapped file: no copy).
    pub fn from_qmatrix(q: QMatrix) -> Result<Tensor> {
        let Some(t) = QuantType::from_ggml(q.ty()) else {
            return Err(Error::Invalid {
                op: "from_qmatrix",
                reason: format!("{} is not a block format with kernels", q.ty()),
            });
        };
        let shape = Shape::from([q.rows(), q.cols()]);
        Tensor::cpu(CpuStorage::Quant(t, q), shape)
    }
    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        let n = shape.elem_count();
        Tensor {
            storage: Arc::new(Storage::Cpu(CpuStorage::F32(vec![0.0; n]))),
            layout: Layout::contiguous(shape),
        }
    }
    /// Zeros of `dtype` on `device`.
    pub fn zeros_on(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match device {
            Device::Cpu => Tensor::zeros(shape).to_dtype(dtype),
            Device::Cuda(i) => {
                let n = shape.elem_count();
                Tensor::from_storage(Storage::Cuda(cuda::zeros(i, dtype, n)?), shape)
            }
        }
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn shape(&self) -> &Shape {
        &self.layout.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.layout.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.layout.shape.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.layout.shape.elem_count()
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Size of dimension `d`, with an error naming the op when out of range.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.dims().get(d).copied().ok_or_else(|| Error::Dim {
            op: "dim",
            dim: d,
            shape: self.dims().to_vec(),
        })
    }

    /// The dims of a rank-2 tensor.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.dims() {
            [a, b] => Ok((*a, *b)),
            d => Err(Error::Rank {
                op,
                expected: 2,
                got: d.to_vec(),
            }),
        }
    }

    /// The kiln-quant matrix of a quantized host tensor.
    pub(crate) fn host_qmatrix(&self, op: &'static str) -> Result<&QMatrix> {
        match self.host(op)? {
            CpuStorage::Quant(_, q) => Ok(q),
            s => Err(Error::DType {
                op,
                dtype: s.dtype(),
            }),
        }
    }

    /// Views of a quantized matrix would split blocks: it is always whole and contiguous.
    fn no_quant_view(&self, op: &'static str) -> Result<()> {
        match self.dtype() {
            DType::Quant(_) => Err(Error::Invalid {
                op,
                reason: format!(
                    "a {} matrix has no views; dequantize it first (to_dtype)",
                    self.dtype()
                ),
            }),
            _ => Ok(()),
        }
    }

    fn host(&self, op: &'static str) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(Error::NotOnHost {
                op,
                device: self.device(),
            }),
        }
    }

    /// The f32 elements of a contiguous f32 host tensor, without copying.
    pub fn as_f32_slice(&self) -> Result<&[f32]> {
        if !self.is_contiguous() {
            return Err(Error::NotContiguous {
                op: "as_f32_slice",
                shape: self.dims().to_vec(),
                strides: self.layout.strides.clone(),
            });
        }
        match self.host("as_f32_slice")? {
            CpuStorage::F32(v) => {
                Ok(&v[self.layout.offset..self.layout.offset + self.elem_count()])
            }
            s => Err(Error::DType {
                op: "as_f32_slice",
                dtype: s.dtype(),
            }),
        }
    }

    /// The u32 elements of a contiguous u32 host tensor, without copying.
    pub fn as_u32_slice(&self) -> Result<&[u32]> {
        match (self.host("as_u32_slice")?, self.is_contiguous()) {
            (CpuStorage::U32(v), true) => {
                Ok(&v[self.layout.offset..self.layout.offset + self.elem_count()])
            }
            (s, _) => Err(Error::DType {
                op: "as_u32_slice (contiguous u32)",
                dtype: s.dtype(),
            }),
        }
    }

    /// All elements as f32 in logical (row-major) order; a device tensor is copied to the host
    /// (one of the edges: outputs, logits for sampling, tests).
    pub fn to_vec_f32(&self) -> Vec<f32> {
        self.try_to_vec_f32()
            .expect("to_vec_f32: a device-to-host copy failed (use try_to_vec_f32 to handle it)")
    }

    /// [`to_vec_f32`](Self::to_vec_f32) returning device errors instead of panicking.
    pub fn try_to_vec_f32(&self) -> Result<Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::Quant(_, q)) => Ok(q.dequantize()?),
            Storage::Cpu(s) => {
                if let Ok(v) = self.as_f32_slice() {
                    return Ok(v.to_vec());
                }
                Ok(self.layout.indices().map(|i| s.get_f32(i)).collect())
            }
            Storage::Cuda(_) => self.to_device(Device::Cpu)?.try_to_vec_f32(),
        }
    }

    /// All elements as u32 (ids), copied to the host if needed.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        let t = self.to_device(Device::Cpu)?.contiguous_host();
        Ok(t.as_u32_slice()?.to_vec())
    }

    /// A contiguous f32 copy (or the tensor itself when it already is one) on the same device.
    pub fn to_f32(&self) -> Tensor {
        self.to_dtype(DType::F32)
            .expect("to_f32: a device cast failed (use to_dtype to handle it)")
    }

    /// The same values in `dtype`, on the same device (the tensor itself when it already is).
    /// A block format dequantizes to a float dtype; a host f32/f16/bf16 matrix quantizes to a
    /// block format (kiln-quant's round-to-nearest quantizers, bit-identical to ggml's for the
    /// 32-blocks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() && self.is_contiguous() {
            return Ok(self.clone());
        }
        if let DType::Quant(q) = dtype {
            let (rows, cols) = self.dims2("quantize")?;
            if self.device() != Device::Cpu || self.dtype().quant().is_some() {
                return Err(Error::Unsupported {
                    op: format!("quantize to {dtype}"),
                    dtype: self.dtype(),
                    device: self.device(),
                });
            }
            let data = self.try_to_vec_f32()?;
            return Tensor::from_qmatrix(QMatrix::quantize(q.ggml(), rows, cols, &data)?);
        }
        match &*self.storage {
            Storage::Cpu(s) => {
                let storage = if dtype == self.dtype() {
                    s.select(self.layout.indices())
                } else {
                    CpuStorage::from_f32(self.try_to_vec_f32()?, dtype)
                };
                Tensor::cpu(storage, self.shape().clone())
            }
            Storage::Cuda(_) => crate::backend::of(self).cast(self, dtype),
        }
    }

    /// A contiguous copy on the same device (or the tensor itself when it already is one).
    pub fn contiguous(&self) -> Tensor {
        self.try_contiguous()
            .expect("contiguous: a device copy failed (use try_contiguous to handle it)")
    }

    pub fn try_contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        match &*self.storage {
            Storage::Cpu(_) => Ok(self.contiguous_host()),
            Storage::Cuda(_) => crate::backend::of(self).copy(self),
        }
    }

    fn contiguous_host(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let s = self.host("contiguous").expect("called on host tensors");
        Tensor {
            storage: Arc::new(Storage::Cpu(s.select(self.layout.indices()))),
            layout: Layout::contiguous(self.shape().clone()),
        }
    }

    /// This tensor on `device` (the tensor itself when it is already there). Host to device
    /// and back are the only copies between memories; views are made contiguous first.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let t = self.try_contiguous()?;
        let storage = match (&*t.storage, device) {
            (Storage::Cpu(s), Device::Cuda(i)) => {
                Storage::Cuda(cuda::upload(i, s, t.layout.offset, t.elem_count())?)
            }
            (Storage::Cuda(s), Device::Cpu) => Storage::Cpu(s.download(t.layout.offset, t.dims())?),
            (Storage::Cuda(_), Device::Cuda(_)) => {
                // Device to device goes through the host: peer copies are the tensor-parallel
                // issue's, not needed by one-GPU inference.
                return t.to_device(Device::Cpu)?.to_device(device);
            }
            (Storage::Cpu(_), Device::Cpu) => unreachable!("same device returned above"),
        };
        Tensor::from_storage(storage, t.shape().clone())
    }

    /// Same elements, new shape; copies only when the tensor is not contiguous.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if self.dtype().quant().is_some() && shape.dims() == self.dims() {
            return Ok(self.clone());
        }
        self.no_quant_view("reshape")?;
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.dims().to_vec(),
                rhs: shape.0,
            });
        }
        let t = self.try_contiguous()?;
        let offset = t.layout.offset;
        let mut layout = Layout::contiguous(shape);
        layout.offset = offset;
        Ok(Tensor {
            storage: t.storage,
            layout,
        })
    }

    /// A view of `len` entries of dimension `dim` starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.no_quant_view("narrow")?;
        let size = self.dim(dim)?;
        if start + len > size {
            return Err(Error::Range {
                op: "narrow",
                start,
                end: start + len,
                size,
            });
        }
        let mut layout = self.layout.clone();
        layout.offset += start * layout.strides[dim];
        layout.shape.0[dim] = len;
        Ok(Tensor {
            storage: self.storage.clone(),
            layout,
        })
    }

    /// A view with dimensions `a` and `b` swapped.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        self.no_quant_view("transpose")?;
        self.dim(a)?;
        self.dim(b)?;
        let mut layout = self.layout.clone();
        layout.shape.0.swap(a, b);
        layout.strides.swap(a, b);
        Ok(Tensor {
            storage: self.storage.clone(),
            layout,
        })
    }

    /// The f32 storage from this view's offset to the end (for strided kernels such as gemm).
    pub(crate) fn storage_f32(&self) -> Option<&[f32]> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Some(&v[self.layout.offset..]),
            _ => None,
        }
    }

    /// The elements as an owned f32 host vector, reusing the storage when this tensor is its
    /// only, contiguous, f32 user (the common case for an op's fresh output).
    pub fn into_f32_vec(self) -> Vec<f32> {
        if self.dtype() == DType::F32 && self.is_contiguous() && self.layout.offset == 0 {
            let n = self.elem_count();
            match Arc::try_unwrap(self.storage) {
                Ok(Storage::Cpu(CpuStorage::F32(mut v))) => {
                    v.truncate(n);
                    return v;
                }
                Ok(other) => {
                    let t = Tensor {
                        storage: Arc::new(other),
                        layout: self.layout,
                    };
                    return t.to_vec_f32();
                }
                Err(storage) => {
                    let t = Tensor {
                        storage,
                        layout: self.layout,
                    };
                    return t.to_vec_f32();
                }
            }
        }
        self.to_vec_f32()
    }

    /// Whether this tensor is the only user of its storage (an op may then write in place).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn is_unique(&mut self) -> bool {
        Arc::get_mut(&mut self.storage).is_some()
    }
}
