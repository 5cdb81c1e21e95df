//! kiln-models: one file per model family, built from kiln-nn layers, and the registry that maps
//! a checkpoint (`config.json` `architectures`, or GGUF `general.architecture`) to a constructor.

mod bart;
mod bert;
mod bloom;
mod config;
mod distilbert;
mod error;
pub mod export;
mod export_quant;
mod gpt2;
mod llama;
mod moe;
pub mod pooling;
pub mod quantize;
mod quantize_awq;
mod registry;
mod seq2seq;
mod stack;
mod t5;

pub use bart::{Bart, BartConfig};
pub use bert::{Bert, BertConfig, HeadKind};
pub use bloom::{Bloom, BloomConfig};
pub use config::HfConfig;
pub use error::{Error, Result};
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{Llama, LlamaConfig};
pub use moe::{MoeConfig, MoeReport};
pub use registry::{load, load_on, Loaded, Model, ModelInfo, SUPPORTED_ARCHITECTURES};
pub use seq2seq::{EncoderMemory, Seq2Seq, Seq2SeqInfo};
pub use t5::{T5Config, T5};
