//! Typed access to a Hugging Face `config.json`, plus the translation of GGUF metadata into the
//! same shape, so every family parses one config format whatever file the model came from.

use serde_json::{json, Map, Value};

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct HfConfig {
    pub json: Value,
    /// Where it came from, for error messages.
    pub origin: String,
}

impl HfConfig {
    pub fn from_file(path: &std::path::Path) -> Result<HfConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if !json.is_object() {
            return Err(Error::BadConfig {
                path: path.display().to_string(),
                reason: "not a JSON object".into(),
            });
        }
        Ok(HfConfig {
            json,
            origin: path.display().to_string(),
        })
    }

    pub(crate) fn bad(&self, reason: String) -> Error {
        Error::BadConfig {
            path: self.origin.clone(),
            reason,
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.bad(format!("missing `{key}`")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.bad(format!("`{key}` must be a non-negative integer"))),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.bad(format!("`{key}` must be a number"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.json
            .get(key)
            .and_then(|v| v.as_bool())
            .unwrap_or(default)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(|v| v.as_str())
    }

    /// The first entry of `architectures`, or a name derived from `model_type`.
    pub fn architecture(&self) -> Result<String> {
        if let Some(a) = self
            .json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
        {
            return Ok(a.to_string());
        }
        match self.str("model_type") {
            Some(t) => Ok(t.to_string()),
            None => Err(self.bad("neither `architectures` nor `model_type` is set".into())),
        }
    }

    /// `eos_token_id` as a list (configs hold an int, a list, or null).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        ids(self.json.get("eos_token_id"))
    }

    /// Reads GGUF metadata for a LLaMA-style architecture, GPT-2 or BLOOM into config.json form.
    pub fn from_gguf(file: &kiln_gguf::GgufFile) -> Result<HfConfig> {
        let arch = file.architecture()?.to_string();
        match arch.as_str() {
            "gpt2" => return gpt2_from_gguf(file),
            "bloom" => return bloom_from_gguf(file),
            _ => {}
        }
        let k = |s: &str| format!("{arch}.{s}");
        let n_experts = file.get_u32(&k("expert_count")).unwrap_or(0);
        // (HF architecture, HF model_type)
        let (hf_arch, model_type) = match arch.as_str() {
            "llama" if n_experts > 0 => ("MixtralForCausalLM", "mixtral"),
            "llama" => ("LlamaForCausalLM", "llama"),
            "mistral" => ("MistralForCausalLM", "mistral"),
            "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
            "qwen2moe" => ("Qwen2MoeForCausalLM", "qwen2_moe"),
            "qwen3moe" => ("Qwen3MoeForCausalLM", "qwen3_moe"),
            other => {
                return Err(Error::UnknownArchitecture {
                    found: format!("{other} (GGUF)"),
                })
            }
        };
        let n_heads = file.get_u32(&k("attention.head_count"))?;
        let hidden = file.get_u32(&k("embedding_length"))?;
        let mut m = Map::new();
        m.insert("architectures".into(), json!([hf_arch]));
        m.insert("model_type".into(), json!(model_type));
        m.insert("hidden_size".into(), json!(hidden));
        let expert_ffn = file.get_u32(&k("expert_feed_forward_length")).ok();
        let ffn = match (file.get_u32(&k("feed_forward_length")), expert_ffn) {
            (Ok(f), _) | (Err(_), Some(f)) => f,
            (Err(e), None) => return Err(e.into()),
        };
        m.insert("intermediate_size".into(), json!(ffn));
        if n_experts > 0 {
            // llama.cpp's llama (Mixtral) and qwen3moe graphs renormalize the top-k weights,
            // qwen2moe's do not, unless the file says otherwise.
            let norm = file
                .get_bool(&k("expert_weights_norm"))
                .unwrap_or(model_type != "qwen2_moe");
            m.insert("num_local_experts".into(), json!(n_experts));
            m.insert(
                "num_experts_per_tok".into(),
                json!(file.get_u32(&k("expert_used_count"))?),
            );
            m.insert("norm_topk_prob".into(), json!(norm));
            if let Some(f) = expert_ffn {
                m.insert("moe_intermediate_size".into(), json!(f));
            }
            if let Ok(s) = file.get_u32(&k("expert_shared_feed_forward_length")) {
                m.insert("shared_expert_intermediate_size".into(), json!(s));
            }
        }
        m.insert(
            "num_hidden_layers".into(),
            json!(file.get_u32(&k("block_count"))?),
        );
        m.insert("num_attention_heads".into(), json!(n_heads));
        let kv = file
            .get_u32(&k("attention.head_count_kv"))
            .unwrap_or(n_heads);
        m.insert("num_key_value_heads".into(), json!(kv));
        if let Ok(d) = file.get_u32(&k("attention.key_length")) {
            m.insert("head_dim".into(), json!(d));
        }
        m.insert(
            "rms_norm_eps".into(),
            json!(file.get_f32(&k("attention.layer_norm_rms_epsilon"))?),
        );
        m.insert(
            "max_position_embeddings".into(),
            json!(file.get_u32(&k("context_length"))?),
        );
        m.insert(
            "rope_theta".into(),
            json!(file.get_f32(&k("rope.freq_base")).unwrap_or(10000.0)),
        );
        let vocab = match file.get_u32(&k("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => file.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        m.insert("vocab_size".into(), json!(vocab));
        m.insert(
            "tie_word_embeddings".into(),
            json!(file.tensor("output.weight").is_none()),
        );
        if let Ok(w) = file.get_u32(&k("attention.sliding_window")) {
            m.insert("sliding_window".into(), json!(w));
        }
        if let Ok(kind) = file.get_str(&k("rope.scaling.type")) {
            if kind != "none" {
                let mut s = Map::new();
                s.insert("rope_type".into(), json!(kind));
                if let Ok(f) = file.get_f32(&k("rope.scaling.factor")) {
                    s.insert("factor".into(), json!(f));
                }
                if let Ok(o) = file.get_u32(&k("rope.scaling.original_context_length")) {
                    s.insert("original_max_position_embeddings".into(), json!(o));
                }
                m.insert("rope_scaling".into(), Value::Object(s));
            }
        }
        if arch == "qwen2" {
            m.insert("attention_bias".into(), json!(true));
        }
        if let Ok(e) = file.get_u32("tokenizer.ggml.eos_token_id") {
            m.insert("eos_token_id".into(), json!(e));
        }
        if let Ok(b) = file.get_u32("tokenizer.ggml.bos_token_id") {
            m.insert("bos_token_id".into(), json!(b));
        }
        Ok(HfConfig {
            json: Value::Object(m),
            origin: file.path().display().to_string(),
        })
    }
}

/// GGUF `gpt2` metadata (llama.cpp's convert_hf_to_gguf.py GPT2Model) as a GPT-2 config.json.
fn gpt2_from_gguf(file: &kiln_gguf::GgufFile) -> Result<HfConfig> {
    let n_embd = file.get_u32("gpt2.embedding_length")?;
    let mut m = Map::new();
    m.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
    m.insert("model_type".into(), json!("gpt2"));
    m.insert("n_embd".into(), json!(n_embd));
    m.insert("n_layer".into(), json!(file.get_u32("gpt2.block_count")?));
    m.insert(
        "n_head".into(),
        json!(file.get_u32("gpt2.attention.head_count")?),
    );
    m.insert(
        "n_inner".into(),
        json!(file
            .get_u32("gpt2.feed_forward_length")
            .unwrap_or(4 * n_embd)),
    );
    m.insert(
        "n_positions".into(),
        json!(file.get_u32("gpt2.context_length")?),
    );
    m.insert("activation_function".into(), json!("gelu_new"));
    gguf_common(file, "gpt2", &mut m)?;
    Ok(HfConfig {
        json: Value::Object(m),
        origin: file.path().display().to_string(),
    })
}

/// GGUF `bloom` metadata (llama.cpp's convert_hf_to_gguf.py BloomModel) as a BLOOM config.json.
/// The converter writes `seq_length` as the context length (or `n_embed` when the config has
/// none, which kiln cannot tell apart).
fn bloom_from_gguf(file: &kiln_gguf::GgufFile) -> Result<HfConfig> {
    let mut m = Map::new();
    m.insert("architectures".into(), json!(["BloomForCausalLM"]));
    m.insert("model_type".into(), json!("bloom"));
    m.insert(
        "hidden_size".into(),
        json!(file.get_u32("bloom.embedding_length")?),
    );
    m.insert("n_layer".into(), json!(file.get_u32("bloom.block_count")?));
    m.insert(
        "n_head".into(),
        json!(file.get_u32("bloom.attention.head_count")?),
    );
    m.insert(
        "seq_length".into(),
        json!(file.get_u32("bloom.context_length")?),
    );
    gguf_common(file, "bloom", &mut m)?;
    Ok(HfConfig {
        json: Value::Object(m),
        origin: file.path().display().to_string(),
    })
}

/// Metadata GPT-2 and BLOOM GGUF files share: LayerNorm epsilon, vocabulary, tied head,
/// special token ids.
fn gguf_common(file: &kiln_gguf::GgufFile, arch: &str, m: &mut Map<String, Value>) -> Result<()> {
    m.insert(
        "layer_norm_epsilon".into(),
        json!(file.get_f32(&format!("{arch}.attention.layer_norm_epsilon"))?),
    );
    m.insert(
        "vocab_size".into(),
        json!(file.get_str_array("tokenizer.ggml.tokens")?.len()),
    );
    m.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_none()),
    );
    for (key, gguf_key) in [
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
    ] {
        if let Ok(id) = file.get_u32(gguf_key) {
            m.insert(key.into(), json!(id));
        }
    }
    Ok(())
}

/// Token ids from a config value that may be an int, a list of ints or null.
pub fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}
