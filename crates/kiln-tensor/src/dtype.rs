//! Element types a tensor can hold.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Token ids, positions, block tables and slot mappings (never a model's activations).
    U32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// A floating-point type (what activations and weights are).
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// Parses the names used by config.json (`torch_dtype` / `dtype`), safetensors headers and
    /// the CLI's `--dtype`.
    pub fn parse(name: &str) -> Option<DType> {
        match name
            .trim_start_matches("torch.")
            .to_ascii_lowercase()
            .as_str()
        {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
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
        })
    }
}
