//! The CUDA backend (feature `cuda`): device state, a caching allocator, kernels compiled at run
//! time by NVRTC, cuBLASLt matmuls. Everything CUDA is loaded dynamically (cudarc's
//! `dynamic-loading`), so a build with the feature needs no toolkit and runs without a GPU;
//! [`check`] turns a missing driver or device into one clear error instead of a panic.
//!
//! Without the feature this module keeps the same names over an uninhabited [`CudaStorage`],
//! so `Storage`'s matches are written once, and every entry point says how to get CUDA.

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
mod blas;
#[cfg(feature = "cuda")]
mod context;
#[cfg(feature = "cuda")]
pub(crate) mod kernels;
#[cfg(feature = "cuda")]
pub(crate) mod nvrtc;
#[cfg(feature = "cuda")]
mod storage;

#[cfg(feature = "cuda")]
pub(crate) use context::{check, upload, zeros};
#[cfg(feature = "cuda")]
pub use context::{compile_all_kernels, device_info};
#[cfg(feature = "cuda")]
pub use storage::CudaStorage;

#[cfg(not(feature = "cuda"))]
mod disabled;
#[cfg(not(feature = "cuda"))]
pub(crate) use disabled::{check, upload, zeros};
#[cfg(not(feature = "cuda"))]
pub use disabled::{compile_all_kernels, device_info, CudaStorage};

/// Whether this build has the CUDA backend.
pub const ENABLED: bool = cfg!(feature = "cuda");
