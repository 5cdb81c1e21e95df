//! The error type of kiln-nn: loading problems name the file and tensor.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    #[error(transparent)]
    Quant(#[from] kiln_quant::Error),
    #[error(transparent)]
    Gguf(#[from] kiln_gguf::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: String, reason: String },
    #[error("tensor `{name}` not found in {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}`: unsupported dtype {dtype}")]
    UnsupportedDType { name: String, dtype: String },
    #[error("paged KV, sequence {seq}: {reason}")]
    PagedKv { seq: usize, reason: String },
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;
