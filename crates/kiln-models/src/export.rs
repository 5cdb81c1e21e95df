//! Writing a loaded model back as a Hugging Face directory: `config.json` and
//! `model.safetensors` with every tensor the model loaded (its weights' load log), under the
//! checkpoint's own names, dense in f32/f16/bf16 — or, for the linears a quantization produced,
//! in the GPTQ or AWQ checkpoint layout with `quantization_config` as AutoGPTQ/GPTQModel and
//! AutoAWQ write it (kiln-quant `gptq_pack`, `awq_pack`).
//!
//! A GGUF source is dequantized, and the q/k rows that llama.cpp's converter permuted for
//! interleaved rotary pairs are put back in Hugging Face's order, so transformers reads the
//! result. The tokenizer files are the caller's (kiln-cli writes them).

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use kiln_quant::IntMatrix;
use kiln_tensor::DType;
use safetensors::Dtype;
use serde_json::{json, Value};

use crate::registry::Loaded;
use crate::{Error, Result};

/// The dtype of the dense tensors written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseDtype {
    F32,
    F16,
    BF16,
}

impl DenseDtype {
    pub fn parse(s: &str) -> Option<DenseDtype> {
        match DType::parse(s)? {
            DType::F32 => Some(DenseDtype::F32),
            DType::F16 => Some(DenseDtype::F16),
            DType::BF16 => Some(DenseDtype::BF16),
            _ => None,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            DenseDtype::F32 => "float32",
            DenseDtype::F16 => "float16",
            DenseDtype::BF16 => "bfloat16",
        }
    }
}

/// The checkpoint layout of quantized linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// AutoGPTQ / GPTQModel; `v2` is `checkpoint_format: "gptq_v2"` (zeros as they are).
    Gptq { v2: bool },
    /// AutoAWQ's GEMM layout (4-bit, with zero points).
    Awq,
}

/// Quantized linears to write instead of their dense weights, by linear name (no `.weight`).
pub struct QuantizedLinears<'a> {
    pub format: QuantFormat,
    pub linears: &'a BTreeMap<String, IntMatrix>,
    /// The rest of `quantization_config` (method details: `desc_act`, `damp_percent`, ...).
    pub extra_config: Value,
    /// Dense tensors to divide elementwise by these (AWQ's scales folded into norms).
    pub dense_divisors: &'a BTreeMap<String, Vec<f32>>,
}

/// One tensor to write.
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OutTensor {
    pub(crate) fn dense(
        name: String,
        shape: Vec<usize>,
        v: &[f32],
        dtype: DenseDtype,
    ) -> OutTensor {
        let (dtype, bytes) = match dtype {
            DenseDtype::F32 => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            DenseDtype::F16 => (
                Dtype::F16,
                v.iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
            DenseDtype::BF16 => (
                Dtype::BF16,
                v.iter()
                    .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
        };
        OutTensor {
            name,
            dtype,
            shape,
            bytes,
        }
    }

    pub fn i32(name: String, shape: Vec<usize>, v: &[i32]) -> OutTensor {
        OutTensor {
            name,
            dtype: Dtype::I32,
            shape,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn f16(name: String, shape: Vec<usize>, v: &[f16]) -> OutTensor {
        OutTensor {
            name,
            dtype: Dtype::F16,
            shape,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// For a LLaMA-style GGUF's `q_proj`/`k_proj` (`n_heads` heads of `head_dim` rows): the source
/// row of each Hugging Face row. llama.cpp stores a head's rows as interleaved pairs
/// (`2j + s`); Hugging Face as two halves (`s · head_dim/2 + j`).
pub fn unpermute_rows(n_rows: usize, n_heads: usize) -> Vec<usize> {
    let head_dim = n_rows / n_heads.max(1);
    let half = head_dim / 2;
    (0..n_rows)
        .map(|i| {
            let (h, r) = (i / head_dim, i % head_dim);
            let (s, j) = (r / half.max(1), r % half.max(1));
            h * head_dim + 2 * j + s
        })
        .collect()
}

/// The heads of a permuted q/k projection named `linear`, if it is one.
fn permuted_heads(loaded: &Loaded, linear: &str) -> Result<Option<usize>> {
    if !loaded.permuted_qk {
        return Ok(None);
    }
    let heads = |key: &str| loaded.config.usize(key);
    if linear.ends_with("self_attn.q_proj") {
        Ok(Some(heads("num_attention_heads")?))
    } else if linear.ends_with("self_attn.k_proj") {
        Ok(Some(
            match loaded.config.opt_usize("num_key_value_heads")? {
                Some(n) => n,
                None => heads("num_attention_heads")?,
            },
        ))
    } else {
        Ok(None)
    }
}

/// `m` with its rows reordered: row `i` of the result is row `src[i]` of `m`.
fn permute_int_rows(m: &IntMatrix, src: &[usize]) -> IntMatrix {
    let ng = m.n_groups();
    let mut out = m.clone();
    for (i, &s) in src.iter().enumerate() {
        out.q[i * m.cols..(i + 1) * m.cols].copy_from_slice(&m.q[s * m.cols..(s + 1) * m.cols]);
        out.scales[i * ng..(i + 1) * ng].copy_from_slice(&m.scales[s * ng..(s + 1) * ng]);
        out.zeros[i * ng..(i + 1) * ng].copy_from_slice(&m.zeros[s * ng..(s + 1) * ng]);
    }
    out
}

/// For BLOOM's fused `query_key_value` from a GGUF file (llama.cpp's converter regroups the
/// Hugging Face rows `(head, q|k|v, head_dim)` into q | k | v): the source row of each
/// Hugging Face row.
fn bloom_qkv_rows(n_rows: usize, n_heads: usize) -> Vec<usize> {
    let d = n_rows / 3;
    let head_dim = d / n_heads.max(1);
    (0..n_rows)
        .map(|i| {
            let (h, r) = (i / (3 * head_dim), i % (3 * head_dim));
            (r / head_dim) * d + h * head_dim + r % head_dim
        })
        .collect()
}

/// The source row of each Hugging Face row of the linear `linear` (`n_rows` outputs), where a
/// GGUF file stores them in another order: LLaMA-style q/k, BLOOM's fused q/k/v.
fn hf_rows(loaded: &Loaded, linear: &str, n_rows: usize) -> Result<Option<Vec<usize>>> {
    if let Some(h) = permuted_heads(loaded, linear)? {
        return Ok(Some(unpermute_rows(n_rows, h)));
    }
    if loaded.weights.from_gguf_file()
        && loaded.config.str("model_type") == Some("bloom")
        && linear.ends_with("self_attention.query_key_value")
    {
        let heads = loaded.config.usize("n_head")?;
        return Ok(Some(bloom_qkv_rows(n_rows, heads)));
    }
    Ok(None)
}

/// GPT-2's Conv1D weights are stored `(in, out)` in Hugging Face checkpoints, `(out, in)` in
/// GGUF files: the tensors to transpose when the source is a GGUF file.
fn is_gguf_conv1d(loaded: &Loaded, name: &str) -> bool {
    loaded.weights.from_gguf_file()
        && loaded.config.str("model_type") == Some("gpt2")
        && [
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The linears of `loaded` in Hugging Face row order (undoing a GGUF's reordering).
pub fn hf_order(loaded: &Loaded, name: &str, m: &IntMatrix) -> Result<IntMatrix> {
    Ok(match hf_rows(loaded, name, m.rows)? {
        Some(src) => permute_int_rows(m, &src),
        None => m.clone(),
    })
}

/// A loaded tensor as f32 in Hugging Face layout, with its shape.
pub fn dense_tensor(loaded: &Loaded, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = loaded.weights.read(name)?;
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        t.to_dtype(DType::F32)?
    };
    let shape = t.dims().to_vec();
    let v = t.try_to_vec_f32()?;
    let linear = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".bias"))
        .unwrap_or(name);
    let (rows, cols) = match *shape.as_slice() {
        [rows, cols] => (rows, cols),
        [rows] => (rows, 1),
        _ => return Ok((v, shape)),
    };
    let v = match hf_rows(loaded, linear, rows)? {
        Some(src) => {
            let mut out = vec![0.0; v.len()];
            for (i, &s) in src.iter().enumerate() {
                out[i * cols..(i + 1) * cols].copy_from_slice(&v[s * cols..(s + 1) * cols]);
            }
            out
        }
        None => v,
    };
    if shape.len() == 2 && is_gguf_conv1d(loaded, name) {
        let mut out = vec![0.0; v.len()];
        for (r, row) in v.chunks_exact(cols).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                out[c * rows + r] = x;
            }
        }
        return Ok((out, vec![cols, rows]));
    }
    Ok((v, shape))
}

/// Writes `out_dir/config.json` and `out_dir/model.safetensors` (see the module doc).
pub fn write_dir(
    loaded: &Loaded,
    out_dir: &Path,
    dtype: DenseDtype,
    quant: Option<&QuantizedLinears>,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let names = loaded.weights.loaded_tensors();
    let mut tensors = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let linear = name.strip_suffix(".weight").unwrap_or(name);
        match quant.and_then(|q| q.linears.get(linear).map(|m| (q, m))) {
            Some((q, m)) => {
                let m = hf_order(loaded, linear, m)?;
                tensors.extend(crate::export_quant::pack(linear, &m, q.format)?);
            }
            None => {
                let (mut v, shape) = dense_tensor(loaded, name)?;
                if let Some(d) = quant.and_then(|q| q.dense_divisors.get(name)) {
                    if d.len() != v.len() {
                        return Err(Error::Export(format!(
                            "`{name}` has {} values but {} scales to fold",
                            v.len(),
                            d.len()
                        )));
                    }
                    v.iter_mut().zip(d).for_each(|(x, s)| *x /= s);
                }
                tensors.push(OutTensor::dense(name.clone(), shape, &v, dtype));
            }
        }
        on_tensor(i + 1, names.len());
    }
    let mut config = loaded.config.json.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| Error::Export("config.json is not an object".into()))?;
    obj.remove("quantization_config");
    obj.insert("torch_dtype".into(), json!(dtype.torch_name()));
    if let Some(q) = quant {
        obj.insert(
            "quantization_config".into(),
            crate::export_quant::config(q)?,
        );
    }
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Export(format!("writing config.json: {e}")))?;
    let cfg_path = out_dir.join("config.json");
    std::fs::write(&cfg_path, text + "\n").map_err(|e| io(&cfg_path, e))?;
    write_safetensors(&out_dir.join("model.safetensors"), &tensors)
}

fn write_safetensors(path: &Path, tensors: &[OutTensor]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Export(format!("tensor `{}`: {e:?}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, &Some(meta), path)
        .map_err(|e| Error::Export(format!("writing {}: {e:?}", path.display())))
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_undoes_llama_cpp_permutation() {
        // llama.cpp: reshape(n_head, 2, hd/2, ...).swapaxes(1, 2): HF row h*hd + s*hd/2 + j
        // lands at h*hd + 2j + s.
        let (n_heads, hd) = (3, 8);
        let hf: Vec<usize> = (0..n_heads * hd).collect();
        let mut gguf = vec![0; hf.len()];
        for h in 0..n_heads {
            for s in 0..2 {
                for j in 0..hd / 2 {
                    gguf[h * hd + 2 * j + s] = hf[h * hd + s * hd / 2 + j];
                }
            }
        }
        let src = unpermute_rows(n_heads * hd, n_heads);
        let back: Vec<usize> = src.iter().map(|&s| gguf[s]).collect();
        assert_eq!(back, hf);
    }
}
