//! The CPU backend: kernels over f32 slices, multi-threaded with rayon.
//!
//! Each file holds one family of ops. Where a fast path exists (gemm matmul, blocked attention,
//! vectorised dot products) a plain reference kernel sits beside it and the tests compare them.

pub mod activation;
pub mod attention;
pub(crate) mod backend;
mod decode;
#[cfg(target_arch = "x86_64")]
mod decode_avx2;
#[cfg(target_arch = "x86_64")]
mod decode_avx512;
pub mod elementwise;
pub mod encoder;
pub mod matmul;
pub mod norm;
pub mod paged_attention;
pub mod rope;
mod rows_attention;
pub mod softmax;
pub mod vec;
