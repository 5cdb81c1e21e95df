//! kiln-nn: the layers every model file is built from, and the weight loader.
//!
//! Layers hold their weights and expose `forward` over packed `(n_tokens, features)` tensors.
//! Quantization lives inside [`Linear`] and [`Embedding`] (dense or GGUF-quantized storage), so
//! model files never name a format. [`Attention`] owns its projections, rotary embedding, KV
//! writes and kernel choice; a model only states its [`AttentionSpec`].

mod alibi;
mod attention;
mod batch;
pub mod calibrate;
mod cross_attention;
mod embedding;
mod error;
pub mod fused;
mod kv_cache;
mod kv_store;
mod linear;
pub mod load_quant;
mod mlp;
mod moe;
mod norm;
mod paged_kv;
mod relative_bias;
pub mod rope;
mod sinusoidal;
pub mod weights;

pub use alibi::Alibi;
pub use attention::{Attention, AttentionSpec, QkNorm};
pub use batch::{Batch, SeqSpan};
pub use cross_attention::{CrossAttention, CrossKv, CrossStep};
pub use embedding::Embedding;
pub use error::{Error, Result};
pub use kv_cache::{KvCache, LayerKv};
pub use kv_store::{KvStore, SeqCaches};
pub use linear::Linear;
pub use load_quant::LoadQuant;
pub use mlp::{Activation, GatedMlp, Mlp};
pub use moe::{Dispatch, Moe, MoeSpec, RouterStats};
pub use norm::{LayerNorm, RmsNorm};
pub use paged_kv::{KvCacheDtype, PagedKv, PagedKvPool, DECODE_MAX_QUERIES, NO_BLOCK};
pub use relative_bias::{PositionBias, RelativePositionBias};
pub use rope::{Rope, RopeScaling};
pub use sinusoidal::SinusoidalPositions;
pub use weights::{Placement, Weights};
