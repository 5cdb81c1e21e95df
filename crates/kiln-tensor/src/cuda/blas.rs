//! Matmuls through cuBLASLt: f32, f16 and bf16 operands, f32 accumulation (`CUBLAS_COMPUTE_32F`,
//! which never rounds f32 inputs to TF32, so f32 results track the CPU within 1e-5 relative).
//!
//! Row-major `C (m, n) = A (m, k) · B (k, n)` is column-major `Cᵀ (n, m) = Bᵀ · Aᵀ`, so the
//! call passes B first. B is either a row-major `(k, n)` buffer or the transposed view of a
//! row-major `(n, k)` weight (what `Linear` multiplies by), which becomes cuBLAS's `op = T`
//! with no copy. The algorithm cuBLASLt's heuristic picks is cached per shape.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::{result as lt, sys};

use super::context::{cuda_err, CudaDev};
use crate::{DType, Result};

const WORKSPACE: usize = 32 << 20;

pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    algos: HashMap<GemmKey, sys::cublasLtMatmulAlgo_t>,
}

// SAFETY: the handle is only used under the device's `blas` mutex.
unsafe impl Send for Blas {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GemmKey {
    m: usize,
    n: usize,
    k: usize,
    b_trans: bool,
    dtype: DType,
}

/// One row-major GEMM: pointers to contiguous A `(m, k)`, B (`(k, n)`, or `(n, k)` read
/// transposed when `b_trans`), and C `(m, n)`, all of `dtype`.
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub b: u64,
    pub b_trans: bool,
    pub c: u64,
    pub dtype: DType,
}

/// The cuBLASLt type of a float dtype (`supports` admits only those to matmul; the other arms
/// are never reached).
fn data_type(d: DType) -> sys::cudaDataType {
    match d {
        DType::F32 | DType::U32 | DType::Quant(_) => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

struct Layouts([sys::cublasLtMatrixLayout_t; 3], sys::cublasLtMatmulDesc_t);

impl Drop for Layouts {
    fn drop(&mut self) {
        // SAFETY: created by this module and not used after the matmul call.
        unsafe {
            for l in self.0 {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.1);
        }
    }
}

pub(crate) fn gemm(d: &CudaDev, g: &Gemm) -> Result<()> {
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    d.bind()?;
    let mut guard = d.blas.lock().expect("cuBLASLt lock");
    if guard.is_none() {
        let handle = lt::create_handle().map_err(|e| cuda_err("cuBLASLt handle creation", e))?;
        let (workspace, _) = d.alloc(WORKSPACE)?;
        *guard = Some(Blas {
            handle,
            workspace,
            algos: HashMap::new(),
        });
    }
    let blas = guard.as_mut().expect("created above");
    let e = |what: &str| {
        let what = format!("cuBLASLt {what}");
        move |err| cuda_err(&what, err)
    };
    let t = data_type(g.dtype);
    let (m, n, k) = (g.m as u64, g.n as u64, g.k as u64);
    // Column-major view: first operand Bᵀ (n x k), second Aᵀ (k x m), result Cᵀ (n x m).
    let (b_rows, b_cols, ldb) = if g.b_trans { (k, n, k) } else { (n, k, n) };
    let layouts = Layouts(
        [
            lt::create_matrix_layout(t, b_rows, b_cols, ldb as i64).map_err(e("layout"))?,
            lt::create_matrix_layout(t, k, m, k as i64).map_err(e("layout"))?,
            lt::create_matrix_layout(t, n, m, n as i64).map_err(e("layout"))?,
        ],
        lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(e("descriptor"))?,
    );
    let trans_a: i32 = g.b_trans as i32;
    // SAFETY: the attribute buffer is a live i32, as cuBLASLt expects for TRANSA.
    unsafe {
        lt::set_matmul_desc_attribute(
            layouts.1,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &trans_a as *const i32 as *const c_void,
            size_of::<i32>(),
        )
    }
    .map_err(e("transpose attribute"))?;
    let key = GemmKey {
        m: g.m,
        n: g.n,
        k: g.k,
        b_trans: g.b_trans,
        dtype: g.dtype,
    };
    let algo = match blas.algos.get(&key) {
        Some(a) => *a,
        None => {
            let pref = lt::create_matmul_pref().map_err(e("preference"))?;
            let ws = WORKSPACE as u64;
            // SAFETY: live preference and descriptors; the buffer is a u64 as documented.
            let h = unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
                .and_then(|_| {
                    lt::get_matmul_algo_heuristic(
                        blas.handle,
                        layouts.1,
                        layouts.0[0],
                        layouts.0[1],
                        layouts.0[2],
                        layouts.0[2],
                        pref,
                    )
                })
            };
            // SAFETY: created above, no longer used.
            unsafe {
                let _ = lt::destroy_matmul_pref(pref);
            }
            let a = h.map_err(e(&format!("heuristic for {key:?}")))?.algo;
            blas.algos.insert(key, a);
            a
        }
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: pointers address live device buffers of the sizes the layouts describe (checked
    // by the caller); the workspace holds WORKSPACE bytes; all on the device's stream.
    unsafe {
        lt::matmul(
            blas.handle,
            layouts.1,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            g.b as *const c_void,
            layouts.0[0],
            g.a as *const c_void,
            layouts.0[1],
            g.c as *const c_void,
            layouts.0[2],
            g.c as *mut c_void,
            layouts.0[2],
            &algo,
            blas.workspace as *mut c_void,
            WORKSPACE,
            d.cu_stream() as sys::cudaStream_t,
        )
    }
    .map_err(e(&format!("matmul {key:?}")))
}
