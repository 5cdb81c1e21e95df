//! The CUDA C++ kernel sources, embedded at build time and compiled at run time by NVRTC
//! (`nvrtc::cached_cubin`), one module per file of `kernels/`, each with `kernels/common.cuh`
//! (loads/stores, reductions, the grid-stride loop) prepended.
//!
//! Every exported kernel is `extern "C"` (no C++ name mangling) and named `<base>_<dtype>`, with
//! the dtype suffix from [`DTYPE_SUFFIXES`] (`f32`, `bf16`, `f16`; `u32` for `copy_strided` only;
//! casts are `cast_<src>_to_<dst>`). Each `.cu` file opens with its kernels' signatures, grids
//! and layouts; [`kernel_names`] lists what each module exports, so a test can check that every
//! name the launcher asks for exists.

/// One embedded `.cu` file: `name` is its stem (`"elementwise"`), the module key for
/// `Context::function(module, kernel)`.
pub(crate) struct KernelSource {
    pub name: &'static str,
    pub src: &'static str,
}

pub(crate) const SOURCES: &[KernelSource] = &[
    KernelSource {
        name: "elementwise",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/elementwise.cu")
        ),
    },
    KernelSource {
        name: "norm",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/norm.cu")
        ),
    },
    KernelSource {
        name: "rope",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/rope.cu")
        ),
    },
    KernelSource {
        name: "embedding",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/embedding.cu")
        ),
    },
    KernelSource {
        name: "kv",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/kv.cu")
        ),
    },
    KernelSource {
        name: "attention",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/attention.cu")
        ),
    },
    KernelSource {
        name: "quant",
        src: concat!(
            include_str!("kernels/common.cuh"),
            include_str!("kernels/quant.cu")
        ),
    },
];

/// The float dtypes every templated kernel is instantiated for, as name suffixes.
pub(crate) const DTYPE_SUFFIXES: &[&str] = &["f32", "bf16", "f16"];

/// `"<base>_<dtype_suffix>"`, e.g. `kernel_name("rms_norm", "bf16") == "rms_norm_bf16"`.
pub(crate) fn kernel_name(base: &str, dtype_suffix: &str) -> String {
    format!("{base}_{dtype_suffix}")
}

/// Kernel bases instantiated for every suffix of [`DTYPE_SUFFIXES`], per source.
const BASES: &[(&str, &[&str])] = &[
    (
        "elementwise",
        &[
            "copy_strided",
            "unary_silu",
            "unary_gelu",
            "unary_gelu_tanh",
            "unary_relu",
            "unary_tanh",
            "unary_scale",
            "binary_add",
            "binary_mul",
            "gated_silu",
            "gated_gelu",
            "gated_gelu_tanh",
            "gated_relu",
            "gated_tanh",
        ],
    ),
    ("norm", &["rms_norm", "layer_norm", "softmax"]),
    ("rope", &["rope"]),
    ("embedding", &["gather_rows", "combine_rows"]),
    ("kv", &["kv_write"]),
    ("attention", &["attention"]),
    (
        "quant",
        &[
            "dequant_q8_0",
            "dequant_q4_0",
            "dequant_q4_1",
            "dequant_q5_0",
            "dequant_q5_1",
            "dequant_q4_k",
            "dequant_q6_k",
            "qgemv_q8_0",
            "qgemv_q4_0",
            "qgemv_q4_1",
            "qgemv_q5_0",
            "qgemv_q5_1",
            "qgemv_q4_k",
            "qgemv_q6_k",
        ],
    ),
];

/// Kernels of a source that are not `<base>_<float dtype>`.
const EXTRA: &[(&str, &[&str])] = &[(
    "elementwise",
    &[
        "cast_f32_to_bf16",
        "cast_bf16_to_f32",
        "cast_f32_to_f16",
        "cast_f16_to_f32",
        "copy_strided_u32",
    ],
)];

/// Every `extern "C"` kernel that source `source` (a [`KernelSource::name`]) exports; empty for
/// an unknown source.
pub(crate) fn kernel_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (_, bases) in BASES.iter().filter(|(s, _)| *s == source) {
        for base in bases.iter() {
            names.extend(DTYPE_SUFFIXES.iter().map(|t| kernel_name(base, t)));
        }
    }
    for (_, extra) in EXTRA.iter().filter(|(s, _)| *s == source) {
        names.extend(extra.iter().map(|n| n.to_string()));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_lists_its_kernels_and_defines_them() {
        for s in SOURCES {
            let names = kernel_names(s.name);
            assert!(!names.is_empty(), "{} lists no kernel", s.name);
            for n in &names {
                // Names are built by token pasting, so check the macro pieces are there instead
                // of the full name (compile tests check the real symbols).
                let base = n.rsplit_once('_').map_or(n.as_str(), |(b, _)| b);
                let stem = base.split('_').next().unwrap_or(base);
                assert!(
                    s.src.contains(stem),
                    "{}: nothing like {n} in the source",
                    s.name
                );
            }
        }
        assert_eq!(kernel_names("elementwise").len(), 14 * 3 + 5);
        assert!(kernel_names("nope").is_empty());
    }
}
