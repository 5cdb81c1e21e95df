//! Errors of model construction: unknown architectures and bad configs name what they saw.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nn(#[from] kiln_nn::Error),
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    #[error(transparent)]
    Gguf(#[from] kiln_gguf::Error),
    #[error("unknown architecture `{found}` (supported: {})", crate::SUPPORTED_ARCHITECTURES.join(", "))]
    UnknownArchitecture { found: String },
    #[error("{path}: {reason}")]
    BadConfig { path: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("token id {id} is outside the vocabulary ({vocab} tokens)")]
    TokenOutOfRange { id: u32, vocab: usize },
}

pub type Result<T> = std::result::Result<T, Error>;
