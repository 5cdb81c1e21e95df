//! One [`CudaDev`] per ordinal, created on first use and kept for the life of the process: its
//! context, one stream (every op of the device is ordered on it, so the allocator may hand a
//! freed buffer to the next op without a sync), the caching allocator, the kernel modules and
//! the cuBLASLt state.
//!
//! The allocator keeps freed buffers in free lists by size class (powers of two up to 1 MiB,
//! then 2 MiB steps) and never returns memory to the driver: a model's steps allocate the same
//! sizes over and over, and cuMemAlloc/cuMemFree would synchronize the device each time.

use std::collections::HashMap;
use std::panic::catch_unwind;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as dr, sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::blas::Blas;
use super::storage::CudaStorage;
use super::{kernels, nvrtc};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result};

pub(crate) struct CudaDev {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// `sm_90a` on Hopper (wgmma needs the `a`), `sm_XY` elsewhere.
    pub arch: String,
    free: Mutex<HashMap<usize, Vec<sys::CUdeviceptr>>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pub blas: Mutex<Option<Blas>>,
}

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("CUDA {what} failed: {e:?}"))
}

fn size_class(bytes: usize) -> usize {
    const MIB: usize = 1 << 20;
    if bytes <= MIB {
        bytes.max(256).next_power_of_two()
    } else {
        bytes.div_ceil(2 * MIB) * 2 * MIB
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, &'static CudaDev>>> = OnceLock::new();

/// Loads the driver library, catching cudarc's panic when it is absent.
fn driver_present() -> Result<()> {
    // SAFETY: only probes whether the shared library can be opened.
    let present = catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return Err(Error::Cuda(
            "no CUDA driver found (libcuda.so could not be loaded): is an NVIDIA driver installed?"
                .into(),
        ));
    }
    Ok(())
}

/// The device state of `ordinal`, created on first use.
pub(crate) fn dev(ordinal: usize) -> Result<&'static CudaDev> {
    let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().expect("device map lock");
    if let Some(d) = map.get(&ordinal) {
        return Ok(d);
    }
    driver_present()?;
    let count = catch_unwind(CudaContext::device_count)
        .map_err(|_| Error::Cuda("the CUDA driver could not be initialised".into()))?
        .map_err(|e| cuda_err("device count", e))?;
    if ordinal >= count as usize {
        return Err(Error::Cuda(format!(
            "no CUDA device {ordinal}: this machine has {count}"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("context creation", e))?;
    let stream = ctx.default_stream();
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| cuda_err("compute capability query", e))?;
    let arch = if major == 9 && minor == 0 {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    };
    let d: &'static CudaDev = Box::leak(Box::new(CudaDev {
        ordinal,
        ctx,
        stream,
        arch,
        free: Mutex::new(HashMap::new()),
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
        blas: Mutex::new(None),
    }));
    map.insert(ordinal, d);
    Ok(d)
}

pub(crate) fn check(ordinal: usize) -> Result<()> {
    dev(ordinal).map(|_| ())
}

impl CudaDev {
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("context bind", e))
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// A buffer of at least `bytes`, from the free lists when one of its class is there.
    pub fn alloc(&self, bytes: usize) -> Result<(sys::CUdeviceptr, usize)> {
        let class = size_class(bytes);
        if let Some(p) = self
            .free
            .lock()
            .expect("allocator lock")
            .get_mut(&class)
            .and_then(Vec::pop)
        {
            return Ok((p, class));
        }
        self.bind()?;
        // SAFETY: a plain device allocation in this device's (bound) context.
        let p = match unsafe { dr::malloc_sync(class) } {
            Ok(p) => p,
            Err(_) => {
                // Out of memory with buffers cached: give them back and retry once.
                self.release_cached()?;
                // SAFETY: as above.
                unsafe { dr::malloc_sync(class) }.map_err(|e| {
                    Error::Cuda(format!(
                        "out of device memory on cuda:{} allocating {bytes} bytes: {e:?}",
                        self.ordinal
                    ))
                })?
            }
        };
        Ok((p, class))
    }

    /// Returns a buffer to its free list (the stream orders its next use after every op
    /// queued before this point).
    pub fn release(&self, ptr: sys::CUdeviceptr, class: usize) {
        if let Ok(mut f) = self.free.lock() {
            f.entry(class).or_default().push(ptr);
        }
    }

    fn release_cached(&self) -> Result<()> {
        self.synchronize()?;
        let mut f = self.free.lock().expect("allocator lock");
        for (_, ptrs) in f.drain() {
            for p in ptrs {
                // SAFETY: every cached pointer came from malloc_sync and is unused (synced).
                let _ = unsafe { dr::free_sync(p) };
            }
        }
        Ok(())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("stream synchronize", e))
    }

    /// Kernel `name` of the embedded source `module`, compiled (or read from the disk cache)
    /// and loaded on first use.
    pub fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        let key = format!("{module}/{name}");
        if let Some(f) = self
            .functions
            .lock()
            .expect("function cache lock")
            .get(&key)
        {
            return Ok(f.clone());
        }
        let m = self.module(module)?;
        let f = m
            .load_function(name)
            .map_err(|e| cuda_err(&format!("loading kernel {key}"), e))?;
        self.functions
            .lock()
            .expect("function cache lock")
            .insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, module: &'static str) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.lock().expect("module cache lock").get(module) {
            return Ok(m.clone());
        }
        let src = kernels::SOURCES
            .iter()
            .find(|s| s.name == module)
            .ok_or_else(|| Error::Cuda(format!("no embedded kernel source `{module}`")))?;
        let cubin = nvrtc::cached_cubin(src.name, src.src, &self.arch).map_err(|log| {
            Error::Cuda(format!(
                "NVRTC could not compile `{module}` for {}: {log}",
                self.arch
            ))
        })?;
        let m = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| cuda_err(&format!("loading module `{module}`"), e))?;
        self.modules
            .lock()
            .expect("module cache lock")
            .insert(module, m.clone());
        Ok(m)
    }
}

fn host_bytes(s: &CpuStorage, offset: usize, n: usize) -> (&[u8], DType) {
    match s {
        CpuStorage::F32(v) => (bytemuck::cast_slice(&v[offset..offset + n]), DType::F32),
        CpuStorage::F16(v) => (bytemuck::cast_slice(&v[offset..offset + n]), DType::F16),
        CpuStorage::BF16(v) => (bytemuck::cast_slice(&v[offset..offset + n]), DType::BF16),
        CpuStorage::U32(v) => (bytemuck::cast_slice(&v[offset..offset + n]), DType::U32),
        // Quantized tensors have no views: the whole matrix (`offset` 0, every element).
        CpuStorage::Quant(t, q) => (q.data().as_slice(), DType::Quant(*t)),
    }
}

/// Copies `n` host elements from `offset` to a new buffer on `ordinal`.
pub(crate) fn upload(
    ordinal: usize,
    s: &CpuStorage,
    offset: usize,
    n: usize,
) -> Result<CudaStorage> {
    let d = dev(ordinal)?;
    let (bytes, dtype) = host_bytes(s, offset, n);
    let out = CudaStorage::alloc(d, dtype, n)?;
    if !bytes.is_empty() {
        d.bind()?;
        // SAFETY: `out` holds at least `bytes.len()` bytes; a copy from pageable memory is
        // staged before the call returns, so `bytes` may be dropped afterwards.
        unsafe { dr::memcpy_htod_async(out.ptr(), bytes, d.cu_stream()) }
            .map_err(|e| cuda_err("host-to-device copy", e))?;
    }
    Ok(out)
}

pub(crate) fn zeros(ordinal: usize, dtype: DType, n: usize) -> Result<CudaStorage> {
    let d = dev(ordinal)?;
    let out = CudaStorage::alloc(d, dtype, n)?;
    out.memset_zero()?;
    Ok(out)
}

/// One line about device `ordinal`: name, memory, compute capability, kernel arch.
pub fn device_info(ordinal: usize) -> Result<String> {
    let d = dev(ordinal)?;
    let name = d.ctx.name().map_err(|e| cuda_err("device name", e))?;
    let (free, total) = d
        .ctx
        .mem_get_info()
        .map_err(|e| cuda_err("memory info", e))?;
    Ok(format!(
        "cuda:{ordinal} {name}, {:.1} of {:.1} GiB free, kernels for {}",
        free as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64,
        d.arch
    ))
}

/// Compiles every embedded kernel source for `arch` without a GPU (NVRTC only): the CI check
/// that each kernel builds. Returns each source's name and cubin size.
pub fn compile_all_kernels(arch: &str) -> Result<Vec<(String, usize)>> {
    let done = nvrtc::compile_and_check_all(arch).map_err(Error::Cuda)?;
    Ok(done
        .into_iter()
        .map(|(name, size, _)| (name, size))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_classes() {
        assert_eq!(super::size_class(1), 256);
        assert_eq!(super::size_class(1000), 1024);
        assert_eq!(super::size_class(1 << 20), 1 << 20);
        assert_eq!(super::size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(super::size_class(5 << 20), 6 << 20);
    }
}
