//! The quantized half of an export: a linear's [`IntMatrix`] as GPTQ or AWQ checkpoint tensors
//! (kiln-quant `gptq_pack`, `awq_pack`), and `quantization_config` as AutoGPTQ/GPTQModel and
//! AutoAWQ write it.

use kiln_quant::{awq_pack, gptq_pack, IntMatrix};
use serde_json::{json, Value};

use crate::export::{OutTensor, QuantFormat, QuantizedLinears};
use crate::{Error, Result};

/// The checkpoint tensors of the linear `name` (no `.weight`).
pub(crate) fn pack(name: &str, m: &IntMatrix, format: QuantFormat) -> Result<Vec<OutTensor>> {
    let (rows, cols, bits) = (m.rows, m.cols, m.spec.bits as usize);
    let n_groups = m.n_groups();
    let t = |part: &str| format!("{name}.{part}");
    Ok(match format {
        QuantFormat::Gptq { v2 } => {
            let version = if v2 {
                gptq_pack::GptqVersion::V2
            } else {
                gptq_pack::GptqVersion::V1
            };
            let p = gptq_pack::pack(m, version)?;
            vec![
                OutTensor::i32(t("qweight"), vec![cols * bits / 32, rows], &p.qweight),
                OutTensor::i32(t("qzeros"), vec![n_groups, rows * bits / 32], &p.qzeros),
                OutTensor::f16(t("scales"), vec![n_groups, rows], &p.scales),
                OutTensor::i32(t("g_idx"), vec![cols], &p.g_idx),
            ]
        }
        QuantFormat::Awq => {
            let p = awq_pack::pack(m)?;
            vec![
                OutTensor::i32(t("qweight"), vec![cols, rows / 8], &p.qweight),
                OutTensor::i32(t("qzeros"), vec![n_groups, rows / 8], &p.qzeros),
                OutTensor::f16(t("scales"), vec![n_groups, rows], &p.scales),
            ]
        }
    })
}

/// `quantization_config` for the linears of `q` (they share one spec).
pub(crate) fn config(q: &QuantizedLinears) -> Result<Value> {
    let spec = q
        .linears
        .values()
        .next()
        .map(|m| m.spec)
        .ok_or_else(|| Error::Export("no quantized linear to describe".into()))?;
    if q.linears.values().any(|m| m.spec != spec) {
        return Err(Error::Export(
            "the quantized linears do not share one bits/group/sym setting".into(),
        ));
    }
    let group_size = spec.group_size.map_or(-1, |g| g as i64);
    let mut v = match q.format {
        QuantFormat::Gptq { v2 } => json!({
            "quant_method": "gptq",
            "bits": spec.bits,
            "group_size": group_size,
            "sym": spec.sym,
            "desc_act": false,
            "static_groups": false,
            "true_sequential": true,
            "damp_percent": 0.01,
            "checkpoint_format": if v2 { "gptq_v2" } else { "gptq" },
        }),
        QuantFormat::Awq => {
            if spec.bits != 4 || spec.sym {
                return Err(Error::Export(
                    "the AWQ GEMM layout holds 4-bit weights with zero points (not --sym)".into(),
                ));
            }
            json!({
                "quant_method": "awq",
                "bits": 4,
                "group_size": group_size,
                "zero_point": true,
                "version": "gemm",
                "modules_to_not_convert": null,
            })
        }
    };
    if let (Some(o), Some(extra)) = (v.as_object_mut(), q.extra_config.as_object()) {
        for (k, x) in extra {
            o.insert(k.clone(), x.clone());
        }
    }
    Ok(v)
}
