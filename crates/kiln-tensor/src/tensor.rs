//! The `Tensor` type: shared storage + layout, cheap views, and the op entry points.
//!
//! Ops dispatch on [`Device`] with an exhaustive `match`; today only the CPU exists, the CUDA
//! backend is added as another arm (STYLE.md: no backend trait zoo).

use std::sync::Arc;

use half::{bf16, f16};

use crate::{cpu, DType, Error, Layout, Result, Shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
}

#[derive(Debug)]
pub enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Storage {
    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl Tensor {
    fn new(storage: Storage, shape: Shape) -> Result<Tensor> {
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

    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::new(Storage::F32(data), shape.into())
    }
    pub fn from_f16(data: Vec<f16>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::new(Storage::F16(data), shape.into())
    }
    pub fn from_bf16(data: Vec<bf16>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::new(Storage::BF16(data), shape.into())
    }
    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        let n = shape.elem_count();
        Tensor {
            storage: Arc::new(Storage::F32(vec![0.0; n])),
            layout: Layout::contiguous(shape),
        }
    }

    pub fn device(&self) -> Device {
        Device::Cpu
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

    /// The f32 elements of a contiguous f32 tensor, without copying.
    pub fn as_f32_slice(&self) -> Result<&[f32]> {
        if !self.is_contiguous() {
            return Err(Error::NotContiguous {
                op: "as_f32_slice",
                shape: self.dims().to_vec(),
                strides: self.layout.strides.clone(),
            });
        }
        match &*self.storage {
            Storage::F32(v) => Ok(&v[self.layout.offset..self.layout.offset + self.elem_count()]),
            s => Err(Error::DType {
                op: "as_f32_slice",
                dtype: s.dtype(),
            }),
        }
    }

    /// All elements as f32 in logical (row-major) order.
    pub fn to_vec_f32(&self) -> Vec<f32> {
        if let Ok(s) = self.as_f32_slice() {
            return s.to_vec();
        }
        let idx = self.layout.indices();
        match &*self.storage {
            Storage::F32(v) => idx.map(|i| v[i]).collect(),
            Storage::F16(v) => idx.map(|i| v[i].to_f32()).collect(),
            Storage::BF16(v) => idx.map(|i| v[i].to_f32()).collect(),
        }
    }

    /// A contiguous f32 copy (or the tensor itself when it already is one).
    pub fn to_f32(&self) -> Tensor {
        if self.dtype() == DType::F32 && self.is_contiguous() {
            return self.clone();
        }
        Tensor {
            storage: Arc::new(Storage::F32(self.to_vec_f32())),
            layout: Layout::contiguous(self.shape().clone()),
        }
    }

    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let data = self.to_vec_f32();
        let storage = match dtype {
            DType::F32 => Storage::F32(data),
            DType::F16 => Storage::F16(data.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Storage::BF16(data.iter().map(|&x| bf16::from_f32(x)).collect()),
        };
        Tensor {
            storage: Arc::new(storage),
            layout: Layout::contiguous(self.shape().clone()),
        }
    }

    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let idx = self.layout.indices();
        let storage = match &*self.storage {
            Storage::F32(v) => Storage::F32(idx.map(|i| v[i]).collect()),
            Storage::F16(v) => Storage::F16(idx.map(|i| v[i]).collect()),
            Storage::BF16(v) => Storage::BF16(idx.map(|i| v[i]).collect()),
        };
        Tensor {
            storage: Arc::new(storage),
            layout: Layout::contiguous(self.shape().clone()),
        }
    }

    /// Same elements, new shape; copies only when the tensor is not contiguous.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.dims().to_vec(),
                rhs: shape.0,
            });
        }
        let t = self.contiguous();
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

    /// Rows `ids` of a rank-2 table (embedding lookup): (n_ids, cols).
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let (rows, cols) = self.dims2("gather_rows")?;
        let table = self.to_f32();
        let table = table.as_f32_slice()?;
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids {
            let id = id as usize;
            if id >= rows {
                return Err(Error::Index {
                    op: "gather_rows",
                    index: id,
                    size: rows,
                });
            }
            out.extend_from_slice(&table[id * cols..(id + 1) * cols]);
        }
        Tensor::from_vec(out, [ids.len(), cols])
    }

    /// `self (m, k) · rhs (k, n) -> (m, n)`; either operand may be a strided view (e.g. a
    /// transposed weight), which gemm reads in place.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        cpu::matmul::matmul(self, rhs)
    }

    /// `self (m, k) · weightᵀ` for a weight stored (n, k), as in `nn.Linear`.
    pub fn matmul_t(&self, weight: &Tensor) -> Result<Tensor> {
        self.matmul(&weight.transpose(0, 1)?)
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        cpu::elementwise::binary(self, rhs, "add", |a, b| a + b)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        cpu::elementwise::binary(self, rhs, "mul", |a, b| a * b)
    }
    pub fn scale(&self, s: f32) -> Tensor {
        cpu::elementwise::unary(self, |x| x * s)
    }
    pub fn silu(&self) -> Tensor {
        cpu::elementwise::unary(self, cpu::activation::silu)
    }
    pub fn gelu(&self) -> Tensor {
        cpu::elementwise::unary(self, cpu::activation::gelu_erf)
    }
    pub fn gelu_tanh(&self) -> Tensor {
        cpu::elementwise::unary(self, cpu::activation::gelu_tanh)
    }
    pub fn relu(&self) -> Tensor {
        cpu::elementwise::unary(self, |x| x.max(0.0))
    }
    /// Softmax over the last dimension.
    pub fn softmax_last(&self) -> Result<Tensor> {
        let cols = *self.dims().last().unwrap_or(&1);
        let mut data = self.to_vec_f32();
        if cols > 0 {
            data.chunks_mut(cols)
                .for_each(cpu::softmax::softmax_in_place);
        }
        Tensor::from_vec(data, self.shape().clone())
    }
    /// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        cpu::norm::rms_norm(self, weight, eps)
    }
    /// LayerNorm over the last dimension.
    pub fn layer_norm(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        cpu::norm::layer_norm(self, weight, bias, eps)
    }
}

impl Tensor {
    /// The f32 storage from this view's offset to the end (for strided kernels such as gemm).
    pub(crate) fn storage_f32(&self) -> Option<&[f32]> {
        match &*self.storage {
            Storage::F32(v) => Some(&v[self.layout.offset..]),
            _ => None,
        }
    }
}

impl Tensor {
    /// The elements as an owned f32 vector, reusing the storage when this tensor is its only,
    /// contiguous, f32 user (the common case for an op's fresh output).
    pub fn into_f32_vec(self) -> Vec<f32> {
        if self.dtype() == DType::F32 && self.is_contiguous() && self.layout.offset == 0 {
            let n = self.elem_count();
            match Arc::try_unwrap(self.storage) {
                Ok(Storage::F32(mut v)) => {
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
}
