//! Linears stored quantized in a Hugging Face checkpoint: the GPTQ layout (AutoGPTQ/GPTQModel,
//! `checkpoint_format` gptq or gptq_v2, 2/3/4/8 bits, act-order `g_idx`) and AutoAWQ's GEMM
//! layout, as `config.json`'s `quantization_config` names them.
//!
//! A linear `{name}` with `{name}.qweight` is unpacked (kiln-quant `gptq_pack`, `awq_pack`) to
//! an [`IntMatrix`], then stored for inference in the block format that holds it exactly —
//! 4-bit symmetric as Q4_0, 4-bit with zero points as Q4_1 (the block minimum `-scale·zero`
//! rounded to f16), 8-bit symmetric as Q8_0 — so it runs on the VNNI and CUDA kernels those
//! have. Anything else (2/3 bits, 8-bit with zero points, an act-order `g_idx` that is not
//! `c / group_size`, groups not a multiple of 32) is dequantized to a dense matrix: correct,
//! at dense speed.

use half::f16;
use kiln_quant::{awq_pack, gptq_pack, IntMatrix, IntSpec, QMatrix, SharedBytes};
use kiln_tensor::Tensor;
use serde_json::Value;

use super::Weights;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMethod {
    Gptq { v2: bool },
    Awq,
}

/// What `quantization_config` says about the quantized linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointQuant {
    pub method: QuantMethod,
    pub spec: IntSpec,
}

impl CheckpointQuant {
    /// Reads `config.json`'s `quantization_config`; `None` when there is none. Methods kiln
    /// does not read are an error naming them.
    pub fn from_config(config: &Value) -> Result<Option<CheckpointQuant>> {
        let Some(q) = config.get("quantization_config").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let bad = |m: String| Error::Config(format!("quantization_config: {m}"));
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .unwrap_or("gptq");
        let bits = q
            .get("bits")
            .or_else(|| q.get("w_bit"))
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no `bits`".into()))?;
        let group = q
            .get("group_size")
            .or_else(|| q.get("q_group_size"))
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let group_size = match group {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => return Err(bad(format!("group_size {g}"))),
        };
        let (method, sym) = match method {
            "gptq" => {
                let fmt = q
                    .get("checkpoint_format")
                    .and_then(Value::as_str)
                    .unwrap_or("gptq");
                let v2 = match fmt {
                    "gptq" => false,
                    "gptq_v2" => true,
                    other => {
                        return Err(bad(format!(
                            "checkpoint_format `{other}` (kiln reads gptq and gptq_v2)"
                        )))
                    }
                };
                let sym = q.get("sym").and_then(Value::as_bool).unwrap_or(true);
                (QuantMethod::Gptq { v2 }, sym)
            }
            "awq" => {
                let version = q
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("gemm")
                    .to_ascii_lowercase();
                if version != "gemm" {
                    return Err(bad(format!(
                        "AWQ version `{version}` (kiln reads the GEMM layout)"
                    )));
                }
                let zp = q.get("zero_point").and_then(Value::as_bool).unwrap_or(true);
                (QuantMethod::Awq, !zp)
            }
            other => {
                return Err(bad(format!(
                    "quant_method `{other}` is not one kiln reads (gptq, awq)"
                )))
            }
        };
        if !matches!(bits, 2 | 3 | 4 | 8) || (method == QuantMethod::Awq && bits != 4) {
            return Err(bad(format!("{bits}-bit weights")));
        }
        Ok(Some(CheckpointQuant {
            method,
            spec: IntSpec {
                bits: bits as u8,
                group_size,
                sym,
            },
        }))
    }
}

/// The integers of the quantized linear `name` (`rows` = out, `cols` = in features), if the
/// checkpoint holds it quantized.
pub(crate) fn read_int(
    w: &Weights,
    q: &CheckpointQuant,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<IntMatrix>> {
    let full = |part: &str| w.name_of(&format!("{name}.{part}"));
    let Some(qweight) = w.source.get_i32(&full("qweight"))? else {
        return Ok(None);
    };
    let need = |part: &str| -> Result<Vec<i32>> {
        w.source
            .get_i32(&full(part))?
            .map(|(v, _)| v)
            .ok_or_else(|| Error::MissingTensor {
                name: full(part),
                source_desc: w.source.describe(),
            })
    };
    let scales: Vec<f16> = w
        .source
        .get(&full("scales"))?
        .ok_or_else(|| Error::MissingTensor {
            name: full("scales"),
            source_desc: w.source.describe(),
        })?
        .try_to_vec_f32()?
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let qzeros = need("qzeros")?;
    let m = match q.method {
        QuantMethod::Gptq { v2 } => {
            let g_idx = match w.source.get_i32(&full("g_idx"))? {
                Some((g, _)) => g,
                // Older checkpoints without act-order omit it.
                None => {
                    let g = q.spec.group_len(cols).max(1);
                    (0..cols).map(|c| (c / g) as i32).collect()
                }
            };
            let t = gptq_pack::GptqTensors {
                qweight: qweight.0,
                qzeros,
                scales,
                g_idx,
                in_features: cols,
                out_features: rows,
            };
            let version = if v2 {
                gptq_pack::GptqVersion::V2
            } else {
                gptq_pack::GptqVersion::V1
            };
            gptq_pack::unpack(&t, q.spec.bits, q.spec.group_size, q.spec.sym, version)
        }
        QuantMethod::Awq => {
            let t = awq_pack::AwqTensors {
                qweight: qweight.0,
                qzeros,
                scales,
                in_features: cols,
                out_features: rows,
            };
            awq_pack::unpack(&t, q.spec.group_size)
        }
    }
    .map_err(|e| Error::Config(format!("quantized linear `{}`: {e}", w.name_of(name))))?;
    Ok(Some(m))
}

/// The weight matrix a quantized linear computes with (see the module doc).
pub(crate) fn matrix_of(m: &IntMatrix) -> Result<Tensor> {
    Ok(match kiln_quant::int_blocks::to_ggml_blocks(m) {
        Some((ty, bytes)) => Tensor::from_qmatrix(QMatrix::new(
            ty,
            m.rows,
            m.cols,
            SharedBytes::from_vec(bytes),
        )?)?,
        None => Tensor::from_vec(m.dequantize(), [m.rows, m.cols])?,
    })
}
