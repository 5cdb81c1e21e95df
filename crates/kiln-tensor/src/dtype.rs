//! Element types a tensor can hold.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Parses the names used by config.json (`torch_dtype` / `dtype`) and safetensors headers.
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
