//! [`GgmlType`]: the GGML tensor type ids as stored in GGUF files (ggml.h `enum ggml_type`).
//!
//! Every known id is listed with its block geometry so a loader can size any tensor; ids 4 and 5
//! (Q4_2/Q4_3) and 31..=33 (the removed Q4_0_4_4 family) were retired by ggml and are rejected.

use crate::{Error, Result};

/// A GGML tensor type. The discriminant is the id stored in GGUF.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
}

use GgmlType::*;

const ALL: [GgmlType; 31] = [
    F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS,
    IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16,
    TQ1_0, TQ2_0,
];

impl GgmlType {
    /// The type with GGUF id `id`; unknown or retired ids are an error.
    pub fn from_u32(id: u32) -> Result<Self> {
        ALL.iter()
            .copied()
            .find(|t| *t as u32 == id)
            .ok_or(Error::UnknownType(id))
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Values per block (1 for plain types).
    pub fn block_size(self) -> usize {
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL => 32,
            _ => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn type_size(self) -> usize {
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 | F64 => 8,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
        }
    }

    /// ggml's name for the type (`"q4_K"`, `"bf16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            IQ2_XXS => "iq2_xxs",
            IQ2_XS => "iq2_xs",
            IQ3_XXS => "iq3_xxs",
            IQ1_S => "iq1_s",
            IQ4_NL => "iq4_nl",
            IQ3_S => "iq3_s",
            IQ2_S => "iq2_s",
            IQ4_XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1_M => "iq1_m",
            BF16 => "bf16",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
        }
    }

    /// Bytes of a row of `n_cols` values; errors unless `n_cols` is a multiple of the block size.
    pub fn row_bytes(self, n_cols: usize) -> Result<usize> {
        let block_size = self.block_size();
        if !n_cols.is_multiple_of(block_size) {
            return Err(Error::NotBlockMultiple {
                ty: self,
                n_cols,
                block_size,
            });
        }
        (n_cols / block_size)
            .checked_mul(self.type_size())
            .ok_or(Error::Overflow { what: "row bytes" })
    }

    /// Whether this crate can dequantize this type and multiply by it.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q6_K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
