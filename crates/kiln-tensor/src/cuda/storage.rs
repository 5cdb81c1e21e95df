//! A tensor's device buffer: a pointer from the caching allocator, its element type and count.
//! Dropping it returns the buffer to the device's free lists.

use cudarc::driver::{result as dr, sys};

use super::backend::CudaBackend;
use super::context::{cuda_err, CudaDev};
use crate::backend::Backend;
use crate::storage::CpuStorage;
use crate::{DType, Device, Result};
use kiln_quant::{QMatrix, SharedBytes};

pub struct CudaStorage {
    ptr: sys::CUdeviceptr,
    class: usize,
    len: usize,
    dtype: DType,
    pub(crate) dev: &'static CudaDev,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage(cuda:{}, {} x {})",
            self.dev.ordinal, self.len, self.dtype
        )
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        self.dev.release(self.ptr, self.class);
    }
}

impl CudaStorage {
    pub(crate) fn alloc(dev: &'static CudaDev, dtype: DType, len: usize) -> Result<CudaStorage> {
        let (ptr, class) = dev.alloc(dtype.bytes_for(len).max(1))?;
        Ok(CudaStorage {
            ptr,
            class,
            len,
            dtype,
            dev,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }
    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.dev.ordinal)
    }
    pub(crate) fn backend(&self) -> &'static dyn Backend {
        &CudaBackend
    }
    pub(crate) fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
    /// The address of element `offset`.
    pub(crate) fn ptr_at(&self, offset: usize) -> u64 {
        self.ptr + self.dtype.bytes_for(offset) as u64
    }

    pub(crate) fn memset_zero(&self) -> Result<()> {
        let bytes = self.dtype.bytes_for(self.len);
        if bytes == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: the buffer holds `bytes` bytes; ordered on the device's stream.
        unsafe { dr::memset_d8_async(self.ptr, 0, bytes, self.dev.cu_stream()) }
            .map_err(|e| cuda_err("memset", e))
    }

    /// Copies the `dims` elements from `offset` to the host (waits for the stream: an edge). A
    /// quantized matrix comes back as kiln-quant blocks (its shape gives rows and columns).
    pub(crate) fn download(&self, offset: usize, dims: &[usize]) -> Result<CpuStorage> {
        let d = self.dev;
        d.bind()?;
        let src = self.ptr_at(offset);
        let n: usize = dims.iter().product();
        fn copy<T: Default + Clone>(d: &CudaDev, src: u64, n: usize) -> Result<Vec<T>> {
            let mut v = vec![T::default(); n];
            if n > 0 {
                // SAFETY: `src` addresses `n` elements of T inside a live buffer; we wait for
                // the stream before reading `v`.
                unsafe { dr::memcpy_dtoh_async(&mut v[..], src, d.cu_stream()) }
                    .map_err(|e| cuda_err("device-to-host copy", e))?;
                d.synchronize()?;
            }
            Ok(v)
        }
        Ok(match self.dtype {
            DType::F32 => CpuStorage::F32(copy(d, src, n)?),
            DType::F16 => CpuStorage::F16(copy(d, src, n)?),
            DType::BF16 => CpuStorage::BF16(copy(d, src, n)?),
            DType::U32 => CpuStorage::U32(copy(d, src, n)?),
            DType::Quant(q) => {
                let (rows, cols) = match dims {
                    [r, c] => (*r, *c),
                    _ => (1, n),
                };
                let bytes: Vec<u8> = copy(d, src, self.dtype.bytes_for(n))?;
                let m = QMatrix::new(q.ggml(), rows, cols, SharedBytes::from_vec(bytes))?;
                CpuStorage::Quant(q, m)
            }
        })
    }
}
