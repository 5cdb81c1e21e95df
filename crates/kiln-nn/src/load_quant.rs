//! Quantization at load (`--quantize int8|int4|llm-int8` on every command): each dense linear
//! weight is quantized as it loads.
//!
//! - `int8`: Q8_0, int8 symmetric per 32 input columns with an f16 scale (8.5 bits a weight),
//!   rounded to nearest; it runs on the quantized kernels GGUF files use (int8 activations in
//!   blocks of 32, VNNI on x86).
//! - `int4`: Q4_1, 4-bit asymmetric per 32 columns, f16 scale and minimum (5 bits a weight);
//!   the LM head gets Q8_0, as llama.cpp gives its 4-bit types a wider output matrix.
//! - `llm-int8`: LLM.int8 (kiln-quant `llm_int8.rs`): int8 rows with one scale each, every
//!   step's activations int8 per token except the outlier feature columns (some value at or
//!   above the threshold, default 6.0), which are multiplied in 16-bit. Threshold 0 is plain
//!   absmax int8. It applies to the linears loaded by name (not to fused q/k/v a model splits
//!   at load, nor to stacked MoE experts) and runs on the host.
//!
//! Token embedding tables (and with them a tied LM head) become Q8_0 under `int8` and `int4`,
//! as llama.cpp stores them: a lookup reads one row, a tied head runs on the int8 kernels.
//!
//! What stays as it is: matrices already in a block format (a GGUF file's, a GPTQ/AWQ
//! checkpoint's), MoE routers ([`is_kept_float`]), and a matrix whose input width is not a
//! multiple of 32. Both quantizers are bit-identical to ggml's (kiln-quant). GPTQ and AWQ,
//! which need calibration text, are `kiln quantize`.

use kiln_quant::Int8Rows;
use kiln_tensor::{DType, QuantType, Tensor};

use crate::{Result, Weights};

/// A weight format a dense checkpoint is quantized into at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadQuant {
    Int8,
    Int4,
    LlmInt8 { threshold: Threshold },
}

/// LLM.int8's outlier threshold (an f32 kept as its bits, so a placement stays `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold(u32);

impl Threshold {
    /// The paper's and bitsandbytes' default.
    pub const DEFAULT: f32 = 6.0;

    pub fn new(t: f32) -> Threshold {
        Threshold(t.to_bits())
    }

    /// `None` for 0 (no decomposition: absmax int8).
    pub fn get(self) -> Option<f32> {
        let t = f32::from_bits(self.0);
        (t > 0.0).then_some(t)
    }
}

impl LoadQuant {
    /// `int8`, `int4`, or `llm-int8` with `threshold` (a finite value >= 0).
    pub fn parse(s: &str, threshold: f32) -> Option<LoadQuant> {
        match s.to_ascii_lowercase().as_str() {
            "int8" | "q8_0" => Some(LoadQuant::Int8),
            "int4" | "q4_1" => Some(LoadQuant::Int4),
            "llm-int8" | "llm_int8" if threshold.is_finite() && threshold >= 0.0 => {
                Some(LoadQuant::LlmInt8 {
                    threshold: Threshold::new(threshold),
                })
            }
            _ => None,
        }
    }

    /// The block format of the linear `name` (none for LLM.int8, which is not a block format).
    fn format(self, name: Option<&str>) -> Option<QuantType> {
        match self {
            LoadQuant::Int8 => Some(QuantType::Q8_0),
            LoadQuant::Int4 if name == Some("lm_head") => Some(QuantType::Q8_0),
            LoadQuant::Int4 => Some(QuantType::Q4_1),
            LoadQuant::LlmInt8 { .. } => None,
        }
    }
}

impl std::fmt::Display for LoadQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadQuant::Int8 => f.write_str("int8"),
            LoadQuant::Int4 => f.write_str("int4"),
            LoadQuant::LlmInt8 { threshold } => {
                write!(f, "llm-int8 (threshold {})", threshold.get().unwrap_or(0.0))
            }
        }
    }
}

/// Whether a linear stays in float whatever the quantization (a MoE router: its few logits
/// pick the experts, and it is a sliver of the weights).
pub fn is_kept_float(name: &str) -> bool {
    name.ends_with(".mlp.gate")
        || name.ends_with(".block_sparse_moe.gate")
        || name.ends_with(".shared_expert_gate")
}

/// `w` (a host `(out, in)` matrix) in `quant`'s block format for the linear `name`, or `w`
/// itself when it stays as it is (see the module doc).
pub(crate) fn apply(quant: Option<LoadQuant>, name: Option<&str>, w: Tensor) -> Result<Tensor> {
    let Some(format) = quant.and_then(|q| q.format(name)) else {
        return Ok(w);
    };
    let Ok((_, cols)) = w.dims2("load quantization") else {
        return Ok(w);
    };
    let keep = !w.dtype().is_float()
        || !cols.is_multiple_of(32)
        || name.is_some_and(is_kept_float)
        || w.device() != kiln_tensor::Device::Cpu;
    if keep {
        return Ok(w);
    }
    Ok(w.to_dtype(DType::Quant(format))?)
}

/// An embedding table `(vocab, dim)` under `quant`: Q8_0 for `int8` and `int4` (dims a multiple
/// of 32, on the host), otherwise as it is.
pub(crate) fn apply_embedding(quant: Option<LoadQuant>, t: Tensor) -> Result<Tensor> {
    match quant {
        Some(LoadQuant::Int8 | LoadQuant::Int4) => apply(Some(LoadQuant::Int8), None, t),
        _ => Ok(t),
    }
}

/// The LLM.int8 rows of the linear `name` under `w`, or `None` where it stays as it is (a
/// matrix already in a block format, a router).
pub(crate) fn llm_int8(
    w: &Weights,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<Int8Rows>> {
    let t = w.host_matrix(&format!("{name}.weight"), rows, cols)?;
    if !t.dtype().is_float() || is_kept_float(&w.name_of(name)) {
        return Ok(None);
    }
    let v = t.try_to_vec_f32()?;
    Ok(Some(Int8Rows::quantize(&v, rows, cols)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> Result<Tensor> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        Ok(Tensor::from_vec(v, [rows, cols])?)
    }

    #[test]
    fn formats_and_what_stays_float() -> Result<()> {
        let w = matrix(4, 64)?;
        let q = |quant, name| -> Result<DType> { Ok(apply(Some(quant), name, w.clone())?.dtype()) };
        assert_eq!(
            q(LoadQuant::Int8, Some("a.q_proj"))?,
            DType::Quant(QuantType::Q8_0)
        );
        assert_eq!(
            q(LoadQuant::Int4, Some("a.q_proj"))?,
            DType::Quant(QuantType::Q4_1)
        );
        assert_eq!(
            q(LoadQuant::Int4, Some("lm_head"))?,
            DType::Quant(QuantType::Q8_0)
        );
        assert_eq!(q(LoadQuant::Int4, None)?, DType::Quant(QuantType::Q4_1));
        assert_eq!(
            q(LoadQuant::Int8, Some("model.layers.0.mlp.gate"))?,
            DType::F32
        );
        assert_eq!(apply(None, None, w.clone())?.dtype(), DType::F32);
        let odd = matrix(4, 48)?;
        assert_eq!(apply(Some(LoadQuant::Int8), None, odd)?.dtype(), DType::F32);
        let already = w.to_dtype(DType::Quant(QuantType::Q4_0))?;
        assert_eq!(
            apply(Some(LoadQuant::Int8), None, already)?.dtype(),
            DType::Quant(QuantType::Q4_0)
        );
        Ok(())
    }

    #[test]
    fn int8_is_close_and_int4_closer_than_its_step() -> Result<()> {
        let w = matrix(8, 128)?;
        let x = matrix(3, 128)?;
        let want = x.matmul_t(&w)?.into_f32_vec();
        for (quant, tol) in [(LoadQuant::Int8, 0.02), (LoadQuant::Int4, 0.2)] {
            let qw = apply(Some(quant), Some("l"), w.clone())?;
            let got = x.matmul_t(&qw)?.into_f32_vec();
            let num: f32 = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f32 = want.iter().map(|b| b * b).sum();
            let rel = (num / den).sqrt();
            assert!(rel < tol && rel > 0.0, "{quant}: relative error {rel}");
        }
        Ok(())
    }
}
