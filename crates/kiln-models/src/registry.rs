//! The registry: from a checkpoint on disk to a constructed [`Model`].
//!
//! A closed enum of families, dispatched by `match` (no trait objects): adding a family is one
//! file, one arm in [`Model`] and one entry in [`SUPPORTED_ARCHITECTURES`].

use std::path::Path;
use std::sync::Arc;

use kiln_nn::{Batch, KvCache, KvStore, Placement, Weights};
use kiln_tensor::RopeStyle;
use kiln_tensor::Tensor;

use crate::config::HfConfig;
use crate::{
    Bart, Bert, BertConfig, Bloom, BloomConfig, Error, Gpt2, Gpt2Config, Llama, LlamaConfig,
    MoeReport, Result, Seq2Seq, T5,
};

pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    // Mixture of experts (llama.rs with moe.rs)
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "OlmoeForCausalLM",
    "GPT2LMHeadModel",
    "GPT2Model",
    "BloomForCausalLM",
    "BloomModel",
    "gpt2",
    "bloom",
    // Encoder-only (bert.rs, distilbert.rs); bare `model_type`s cover configs without `architectures`.
    "BertModel",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForMaskedLM",
    "BertForPreTraining",
    "RobertaModel",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaForMaskedLM",
    "XLMRobertaModel",
    "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification",
    "XLMRobertaForMaskedLM",
    "CamembertModel",
    "DistilBertModel",
    "DistilBertForSequenceClassification",
    "DistilBertForTokenClassification",
    "DistilBertForMaskedLM",
    // Encoder-decoder (t5.rs, bart.rs)
    "T5ForConditionalGeneration",
    "BartForConditionalGeneration",
    "MBartForConditionalGeneration",
    "MarianMTModel",
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
];

/// What the engine needs to know about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub vocab_size: usize,
    pub max_context: usize,
    pub n_layers: usize,
    /// End-of-sequence ids from config.json (the tokenizer may add more).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// The device the weights live on and their dtype.
    pub placement: Placement,
}

#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one model per process; the encoder variant is boxed
pub enum Model {
    Llama(Llama),
    Gpt2(Gpt2),
    Bloom(Bloom),
    /// Encoder-only: decoder methods (`forward`, `logits`) return `Error::EncoderOnly`.
    Bert(Box<Bert>),
    /// Encoder-decoder: decoder-only methods return `Error::EncoderDecoder`; generation goes
    /// through [`Model::as_seq2seq`].
    Seq2Seq(Box<Seq2Seq>),
}

impl Model {
    pub fn new_cache(&self) -> KvCache {
        match self {
            Model::Llama(m) => m.new_cache(),
            Model::Gpt2(m) => m.new_cache(),
            Model::Bloom(m) => m.new_cache(),
            // Nothing to cache: an empty cache, and `forward` says why it cannot be used.
            Model::Bert(_) => KvCache::new(0, 0),
            Model::Seq2Seq(m) => m.new_cache(),
        }
    }

    /// Final hidden states of a packed step; checks token ids first.
    pub fn forward(&self, tokens: &[u32], batch: &Batch, kv: &mut dyn KvStore) -> Result<Tensor> {
        let vocab = self.info().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        match self {
            Model::Llama(m) => m.forward(tokens, batch, kv, None),
            Model::Gpt2(m) => m.forward(tokens, batch, kv, None),
            Model::Bloom(m) => m.forward(tokens, batch, kv, None),
            Model::Bert(_) => Err(self.encoder_only("causal forward pass")),
            Model::Seq2Seq(_) => Err(self.encoder_decoder("decoder-only forward pass")),
        }
    }

    /// Like `forward`, also returning every layer's input and the last layer's output.
    pub fn forward_traced(
        &self,
        tokens: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut trace = Vec::new();
        let h = match self {
            Model::Llama(m) => m.forward(tokens, batch, kv, Some(&mut trace))?,
            Model::Gpt2(m) => m.forward(tokens, batch, kv, Some(&mut trace))?,
            Model::Bloom(m) => m.forward(tokens, batch, kv, Some(&mut trace))?,
            Model::Bert(_) => return Err(self.encoder_only("causal forward pass")),
            Model::Seq2Seq(_) => return Err(self.encoder_decoder("decoder-only forward pass")),
        };
        Ok((h, trace))
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Model::Llama(m) => m.logits(hidden),
            Model::Gpt2(m) => m.logits(hidden),
            Model::Bloom(m) => m.logits(hidden),
            Model::Bert(_) => Err(self.encoder_only("language-model head")),
            // The head needs decoder states; `as_seq2seq().logits` takes them.
            Model::Seq2Seq(m) => m.logits(hidden),
        }
    }

    fn encoder_decoder(&self, what: &'static str) -> Error {
        Error::EncoderDecoder {
            arch: self.info().architecture,
            what,
        }
    }

    /// The encoder-decoder, for seq2seq generation; `None` for other models.
    pub fn as_seq2seq(&self) -> Option<&Seq2Seq> {
        match self {
            Model::Seq2Seq(m) => Some(m.as_ref()),
            _ => None,
        }
    }

    fn encoder_only(&self, what: &'static str) -> Error {
        Error::EncoderOnly {
            arch: self.info().architecture,
            what,
        }
    }

    /// The encoder, for embedding and classification; `None` for decoder-only models.
    pub fn as_encoder(&self) -> Option<&Bert> {
        match self {
            Model::Bert(m) => Some(m.as_ref()),
            Model::Llama(_) | Model::Gpt2(_) | Model::Bloom(_) | Model::Seq2Seq(_) => None,
        }
    }

    /// How many most recent positions every self-attention layer can see, when all have a
    /// sliding window (the largest of them); `None` if any layer sees the whole context. Serving
    /// frees the KV blocks before it.
    pub fn kv_window(&self) -> Option<usize> {
        match self {
            Model::Llama(m) => m
                .cfg
                .windows
                .iter()
                .try_fold(0, |w, l| l.map(|l| w.max(l)))
                .filter(|&w| w > 0),
            Model::Gpt2(_) | Model::Bloom(_) | Model::Bert(_) | Model::Seq2Seq(_) => None,
        }
    }

    /// The routers' statistics since the last reset (a mixture-of-experts model), else `None`.
    pub fn moe_stats(&self) -> Option<MoeReport> {
        match self {
            Model::Llama(m) => m.moe_stats(),
            Model::Gpt2(_) | Model::Bloom(_) | Model::Bert(_) | Model::Seq2Seq(_) => None,
        }
    }

    pub fn reset_moe_stats(&self) {
        if let Model::Llama(m) = self {
            m.reset_moe_stats();
        }
    }

    pub fn info(&self) -> ModelInfo {
        match self {
            Model::Llama(m) => ModelInfo {
                placement: Placement::default(),
                architecture: "llama".into(),
                vocab_size: m.cfg.vocab,
                max_context: m.cfg.max_context(),
                n_layers: m.cfg.n_layers,
                eos_token_ids: Vec::new(),
                bos_token_id: None,
            },
            Model::Gpt2(m) => ModelInfo {
                placement: Placement::default(),
                architecture: "gpt2".into(),
                vocab_size: m.cfg.vocab,
                max_context: m.cfg.n_positions,
                n_layers: m.cfg.n_layers,
                eos_token_ids: Vec::new(),
                bos_token_id: None,
            },
            Model::Bloom(m) => ModelInfo {
                placement: Placement::default(),
                architecture: "bloom".into(),
                vocab_size: m.cfg.vocab,
                max_context: m.cfg.max_context(),
                n_layers: m.cfg.n_layers,
                eos_token_ids: Vec::new(),
                bos_token_id: None,
            },
            Model::Bert(m) => ModelInfo {
                placement: Placement::default(),
                architecture: m.cfg.architecture.clone(),
                vocab_size: m.cfg.vocab,
                max_context: m.cfg.max_tokens(),
                n_layers: m.cfg.n_layers,
                eos_token_ids: Vec::new(),
                bos_token_id: None,
            },
            Model::Seq2Seq(m) => {
                let i = m.info();
                ModelInfo {
                    placement: Placement::default(),
                    architecture: i.architecture.clone(),
                    vocab_size: i.vocab_size,
                    max_context: i.max_target_tokens.unwrap_or(usize::MAX),
                    n_layers: m.n_decoder_layers(),
                    eos_token_ids: i.eos_token_ids.clone(),
                    bos_token_id: None,
                }
            }
        }
    }
}

/// A model with its config-level facts.
pub struct Loaded {
    pub model: Model,
    pub info: ModelInfo,
    pub config: HfConfig,
    /// The weights the model was built from (their load log names every tensor it took).
    pub weights: Weights,
    /// The q/k rows are in llama.cpp's permuted order (a LLaMA-style GGUF file): an export to
    /// Hugging Face layout undoes it.
    pub permuted_qk: bool,
}

/// Loads a model from a GGUF file or a Hugging Face directory. `on_progress(done, total)` is
/// called as layers are constructed.
pub fn load(path: &Path, on_progress: &mut dyn FnMut(usize, usize)) -> Result<Loaded> {
    load_on(path, Placement::default(), on_progress)
}

/// [`load`] with the weights in `placement` (a device and compute dtype); the device is
/// checked first, so a missing GPU is one clear error before any weight is read.
pub fn load_on(
    path: &Path,
    placement: Placement,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Loaded> {
    placement.device.check()?;
    if !path.exists() {
        return Err(Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let (config, weights, style) = if path.is_dir() {
        let config = HfConfig::from_file(&path.join("config.json"))?;
        // Check the architecture before touching the weights, so an unknown model says so.
        arch_of(&config)?;
        (config, Weights::from_hf_dir(path)?, RopeStyle::Half)
    } else {
        let file = Arc::new(kiln_gguf::GgufFile::open(path)?);
        let config = HfConfig::from_gguf(&file)?;
        // llama.cpp's converter permutes q/k rows for its interleaved rotary pairs only in the
        // LLaMA-style architectures; Qwen's are stored as HF has them (NeoX rotary).
        let style = match config.str("model_type") {
            Some("llama" | "mistral" | "mixtral") => RopeStyle::Interleaved,
            _ => RopeStyle::Half,
        };
        (config, Weights::from_gguf(file)?, style)
    };
    let arch = arch_of(&config)?;
    let permuted_qk = style == RopeStyle::Interleaved;
    let weights = weights.placed(placement).with_checkpoint_quant(
        kiln_nn::weights::CheckpointQuant::from_config(&config.json)?,
    );
    let model = match arch {
        "LlamaForCausalLM"
        | "MistralForCausalLM"
        | "Qwen2ForCausalLM"
        | "MixtralForCausalLM"
        | "Qwen2MoeForCausalLM"
        | "Qwen3MoeForCausalLM"
        | "OlmoeForCausalLM" => Model::Llama(Llama::load(
            &weights,
            LlamaConfig::from_hf(&config, style)?,
            on_progress,
        )?),
        "GPT2LMHeadModel" | "GPT2Model" | "gpt2" => Model::Gpt2(Gpt2::load(
            &weights,
            Gpt2Config::from_hf(&config)?,
            on_progress,
        )?),
        "BloomForCausalLM" | "BloomModel" | "bloom" => Model::Bloom(Bloom::load(
            &weights,
            BloomConfig::from_hf(&config)?,
            on_progress,
        )?),
        a if a.starts_with("DistilBert") || a == "distilbert" => {
            Model::Bert(Box::new(crate::distilbert::load(
                &weights,
                crate::distilbert::config(&config, a)?,
                on_progress,
            )?))
        }
        a if a.starts_with("Bert") || a == "bert" => Model::Bert(Box::new(Bert::load(
            &weights,
            BertConfig::from_hf(&config, a)?,
            "bert",
            on_progress,
        )?)),
        a if a.starts_with("Roberta")
            || a.starts_with("XLMRoberta")
            || a.starts_with("Camembert")
            || a == "roberta"
            || a == "xlm-roberta" =>
        {
            Model::Bert(Box::new(Bert::load(
                &weights,
                BertConfig::from_hf(&config, a)?,
                "roberta",
                on_progress,
            )?))
        }
        a @ "T5ForConditionalGeneration" => Model::Seq2Seq(Box::new(Seq2Seq::T5(T5::load(
            &weights,
            &config,
            a,
            on_progress,
        )?))),
        a
        @ ("BartForConditionalGeneration" | "MBartForConditionalGeneration" | "MarianMTModel") => {
            Model::Seq2Seq(Box::new(Seq2Seq::Bart(Bart::load(
                &weights,
                &config,
                a,
                on_progress,
            )?)))
        }
        other => {
            return Err(Error::UnknownArchitecture {
                found: other.to_string(),
            })
        }
    };
    let mut info = model.info();
    info.architecture = arch.to_string();
    info.eos_token_ids = config.eos_token_ids();
    info.bos_token_id = crate::config::ids(config.json.get("bos_token_id"))
        .first()
        .copied();
    info.placement = placement;
    Ok(Loaded {
        model,
        info,
        config,
        weights,
        permuted_qk,
    })
}

fn arch_of(config: &HfConfig) -> Result<&'static str> {
    let arch = config.architecture()?;
    SUPPORTED_ARCHITECTURES
        .iter()
        .find(|&&a| a == arch)
        .copied()
        .ok_or(Error::UnknownArchitecture { found: arch })
}
