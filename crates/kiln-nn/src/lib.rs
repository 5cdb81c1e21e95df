//! kiln-nn: the layers every model file is built from, and the weight loader.
//!
//! Layers hold their weights and expose `forward` over packed `(n_tokens, features)` tensors.
//! Quantization lives inside [`Linear`] and [`Embedding`] (dense or GGUF-quantized storage), so
//! model files never name a format. [`Attention`] owns its projections, rotary embedding, KV
//! writes and kernel choice; a model only states its [`AttentionSpec`].

mod alibi;
mod attention;
mod embedding;
mod error;
pub mod fused;
mod kv_cache;
mod kv_store;
mod linear;
mod mlp;
mod norm;
mod paged_kv;
pub mod rope;
pub mod weights;

pub use alibi::Alibi;
pub use attention::{Attention, AttentionSpec, Batch, SeqSpan};
pub use embedding::Embedding;
pub use error::{Error, Result};
pub use kv_cache::{KvCache, LayerKv};
pub use kv_store::{KvStore, SeqCaches};
pub use linear::Linear;
pub use mlp::{Activation, GatedMlp, Mlp};
pub use norm::{LayerNorm, RmsNorm};
pub use paged_kv::{KvCacheDtype, PagedKv, PagedKvPool, NO_BLOCK};
pub use rope::{Rope, RopeScaling};
pub use weights::{Param, Weights};
