//! GGUF weights addressed by Hugging Face names.
//!
//! llama.cpp renames tensors (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`);
//! [`hf_to_gguf_name`] holds that map for the LLaMA-style families, GPT-2 and BLOOM. Quantized matrices become
//! a quantized tensor ([`kiln_tensor::DType::Quant`]) over the memory map (no copy, no dequantization at load); F32/F16/BF16 tensors
//! become dense f32 tensors. GGUF dims are reversed (dims[0] is the number of columns).

use std::sync::Arc;

use kiln_gguf::{GgmlType, GgufFile};
use kiln_quant::{QMatrix, SharedBytes};
use kiln_tensor::Tensor;

use crate::{Error, Result};

pub struct GgufSource {
    file: Arc<GgufFile>,
}

struct MmapOwner(Arc<kiln_gguf::Mmap>);
impl AsRef<[u8]> for MmapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0[..]
    }
}

/// The llama.cpp name of a Hugging Face tensor name (LLaMA, Mistral, Qwen2 layouts).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    if let Some(rest) = hf.strip_prefix("transformer.") {
        return transformer_to_gguf_name(rest);
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let name = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        // Mixture of experts: the router, the stacked experts (`moe.rs` asks for
        // `experts.gate_proj.weight`, a name no HF checkpoint has, only when a GGUF-style
        // stack is what the file holds), the shared expert and its gate.
        "mlp.gate" => "ffn_gate_inp",
        "mlp.experts.gate_proj" => "ffn_gate_exps",
        "mlp.experts.up_proj" => "ffn_up_exps",
        "mlp.experts.down_proj" => "ffn_down_exps",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.{kind}"))
}

/// GPT-2 and BLOOM (`transformer.` stripped; their module names do not overlap): llama.cpp's
/// `gpt2` and `bloom` names. Layouts differ from the safetensors ones, and the model files say
/// how: GPT-2's Conv1D weights are stored transposed, `(out, in)`, and BLOOM's fused q/k/v rows
/// regrouped from per-head to q | k | v (both by convert_hf_to_gguf.py).
fn transformer_to_gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "wte.weight" | "word_embeddings.weight" => Some("token_embd.weight"),
        "wpe.weight" => Some("position_embd.weight"),
        "word_embeddings_layernorm.weight" => Some("token_embd_norm.weight"),
        "word_embeddings_layernorm.bias" => Some("token_embd_norm.bias"),
        "ln_f.weight" => Some("output_norm.weight"),
        "ln_f.bias" => Some("output_norm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let (layer, rest) = hf.strip_prefix("h.")?.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let name = match module {
        "ln_1" | "input_layernorm" => "attn_norm",
        "attn.c_attn" | "self_attention.query_key_value" => "attn_qkv",
        "attn.c_proj" | "self_attention.dense" => "attn_output",
        "ln_2" | "post_attention_layernorm" => "ffn_norm",
        "mlp.c_fc" | "mlp.dense_h_to_4h" => "ffn_up",
        "mlp.c_proj" | "mlp.dense_4h_to_h" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.{kind}"))
}

impl GgufSource {
    pub fn new(file: Arc<GgufFile>) -> Result<GgufSource> {
        Ok(GgufSource { file })
    }

    pub fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    /// A 3-D tensor `(n, rows, cols)` as `n` matrices: dense ones as views of the f32 tensor,
    /// quantized ones as `n` quantized matrices over consecutive byte ranges of the map (each
    /// matrix's rows are whole blocks, so a stack splits at matrix boundaries).
    pub fn get_stacked(&self, hf_name: &str) -> Result<Option<Vec<Tensor>>> {
        let Some(name) = hf_to_gguf_name(hf_name) else {
            return Ok(None);
        };
        let Some(info) = self.file.tensor(&name) else {
            return Ok(None);
        };
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let &[n, rows, cols] = dims.as_slice() else {
            return Err(Error::WrongShape {
                name,
                expected: vec![0, 0, 0],
                found: dims,
            });
        };
        if matches!(info.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return self.get(hf_name)?.map(super::split_stacked).transpose();
        }
        let per = info.n_bytes as usize / n.max(1);
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> =
            Arc::new(MmapOwner(self.file.mmap().clone()));
        (0..n)
            .map(|e| {
                let bytes =
                    SharedBytes::new(owner.clone(), info.data_offset as usize + e * per, per)?;
                Ok(Tensor::from_qmatrix(QMatrix::new(
                    info.dtype, rows, cols, bytes,
                )?)?)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn get(&self, hf_name: &str) -> Result<Option<Tensor>> {
        let Some(name) = hf_to_gguf_name(hf_name) else {
            return Ok(None);
        };
        let Some(info) = self.file.tensor(&name) else {
            return Ok(None);
        };
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let ty = info.dtype;
        let bytes = SharedBytes::new(
            Arc::new(MmapOwner(self.file.mmap().clone())),
            info.data_offset as usize,
            info.n_bytes as usize,
        )?;
        match (ty, dims.as_slice()) {
            (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16, _) => {
                let n: usize = dims.iter().product();
                let mut out = vec![0.0f32; n];
                kiln_quant::dequantize(ty, bytes.as_slice(), &mut out)?;
                Ok(Some(Tensor::from_vec(out, dims)?))
            }
            (_, [rows, cols]) => Ok(Some(Tensor::from_qmatrix(QMatrix::new(
                ty, *rows, *cols, bytes,
            )?)?)),
            (t, _) => Err(Error::UnsupportedDType {
                name,
                dtype: format!("{t:?} with {} dims", dims.len()),
            }),
        }
    }
}
