//! Run-time choice of the instruction set for the dot-product kernels.

use std::sync::OnceLock;

/// The kernel families, ordered from slowest to fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust; the reference the SIMD kernels are tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (ggml's `__AVX2__` paths).
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI (`vpdpbusd`); used for the 32-blocks formats.
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set of this CPU, capped by `KILN_QUANT_ISA` if set. Cached.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::available().into_iter().max().unwrap_or(Isa::Scalar);
            let cap = match std::env::var("KILN_QUANT_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512Vnni,
            };
            best.min(cap)
        })
    }

    /// Every instruction set this CPU can run (always includes `Scalar`).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        v
    }
}
