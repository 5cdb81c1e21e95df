//! The CUDA names in a build without the `cuda` feature: no storage can exist, and every entry
//! point answers with how to get CUDA.

use crate::backend::Backend;
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result};

const NOT_BUILT: &str =
    "kiln was built without CUDA support: rebuild with `cargo build --release --features cuda`";

/// No value of this type exists in a build without CUDA.
#[derive(Debug)]
pub enum CudaStorage {}

impl CudaStorage {
    pub(crate) fn len(&self) -> usize {
        match *self {}
    }
    pub(crate) fn dtype(&self) -> DType {
        match *self {}
    }
    pub(crate) fn device(&self) -> Device {
        match *self {}
    }
    pub(crate) fn backend(&self) -> &'static dyn Backend {
        match *self {}
    }
    pub(crate) fn download(&self, _offset: usize, _dims: &[usize]) -> Result<CpuStorage> {
        match *self {}
    }
}

pub(crate) fn check(_ordinal: usize) -> Result<()> {
    Err(Error::Cuda(NOT_BUILT.into()))
}

pub(crate) fn upload(
    _ordinal: usize,
    _s: &CpuStorage,
    _offset: usize,
    _n: usize,
) -> Result<CudaStorage> {
    Err(Error::Cuda(NOT_BUILT.into()))
}

pub(crate) fn zeros(_ordinal: usize, _dtype: DType, _n: usize) -> Result<CudaStorage> {
    Err(Error::Cuda(NOT_BUILT.into()))
}

/// One line about the device (name, memory, compute capability).
pub fn device_info(_ordinal: usize) -> Result<String> {
    Err(Error::Cuda(NOT_BUILT.into()))
}

/// Compiles every embedded kernel for `arch` (CI's check that each one builds).
pub fn compile_all_kernels(_arch: &str) -> Result<Vec<(String, usize)>> {
    Err(Error::Cuda(NOT_BUILT.into()))
}
