//! Element types a tensor can hold: the float types activations and dense weights use, u32 for
//! indices, and the GGUF block formats quantized weight matrices are stored in.

use kiln_quant::GgmlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Token ids, positions, block tables and slot mappings (never a model's activations).
    U32,
    /// A quantized weight matrix `(rows, cols)` in a GGUF block format: each row is `cols /
    /// block_size` blocks (kiln-quant documents each layout). Only [`Op::QMatmul`] and
    /// [`Op::Gather`] read it; `to_dtype` quantizes to it (on the host) and dequantizes from it.
    ///
    /// [`Op::QMatmul`]: crate::Op::QMatmul
    /// [`Op::Gather`]: crate::Op::Gather
    Quant(QuantType),
}

/// The block formats with kernels (kiln-quant on the CPU, `quant.cu` on CUDA).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K,
    Q6_K,
}

impl QuantType {
    pub const ALL: [QuantType; 7] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q4_K,
        QuantType::Q6_K,
    ];

    pub fn ggml(self) -> GgmlType {
        match self {
            QuantType::Q8_0 => GgmlType::Q8_0,
            QuantType::Q4_0 => GgmlType::Q4_0,
            QuantType::Q4_1 => GgmlType::Q4_1,
            QuantType::Q5_0 => GgmlType::Q5_0,
            QuantType::Q5_1 => GgmlType::Q5_1,
            QuantType::Q4_K => GgmlType::Q4_K,
            QuantType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The block format of a GGML type, if it is one kiln has kernels for.
    pub fn from_ggml(t: GgmlType) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|q| q.ggml() == t)
    }

    /// Values per block (32, or 256 for the K-quants).
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().type_size()
    }
}

impl DType {
    /// Bytes that `n` elements take (for a block format, `n` is a whole number of blocks).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            DType::F32 | DType::U32 => 4 * n,
            DType::F16 | DType::BF16 => 2 * n,
            DType::Quant(q) => n.div_ceil(q.block_size()) * q.block_bytes(),
        }
    }

    /// A floating-point element type (what activations and dense weights are).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The block format, for a quantized dtype.
    pub fn quant(self) -> Option<QuantType> {
        match self {
            DType::Quant(q) => Some(q),
            _ => None,
        }
    }

    /// Parses the names used by config.json (`torch_dtype` / `dtype`), safetensors headers and
    /// the CLI's `--dtype`, and ggml's names of the block formats (`q4_1`, `q4_K`).
    pub fn parse(name: &str) -> Option<DType> {
        let lower = name.trim_start_matches("torch.").to_ascii_lowercase();
        match lower.as_str() {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => QuantType::ALL
                .into_iter()
                .find(|q| q.ggml().name().eq_ignore_ascii_case(&lower))
                .map(DType::Quant),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::Quant(q) => q.ggml().name(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_formats_parse_and_size() {
        for q in QuantType::ALL {
            let d = DType::Quant(q);
            assert_eq!(DType::parse(&d.to_string()), Some(d));
            assert_eq!(d.bytes_for(2 * q.block_size()), 2 * q.block_bytes());
            assert!(!d.is_float());
        }
        assert_eq!(DType::parse("Q4_K"), Some(DType::Quant(QuantType::Q4_K)));
        assert_eq!(DType::parse("q5_0"), Some(DType::Quant(QuantType::Q5_0)));
        assert_eq!(DType::parse("q5_k"), None);
        assert_eq!(DType::F32.bytes_for(3), 12);
    }
}
