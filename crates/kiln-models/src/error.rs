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
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{arch} is an encoder-only model: it has no {what} (use `kiln embed` or `kiln classify`)"
    )]
    EncoderOnly { arch: String, what: &'static str },
    #[error(
        "{model} is not an encoder model (embed/classify need BERT, RoBERTa, XLM-R or DistilBERT)"
    )]
    NotEncoder { model: String },
    #[error("an input has {n_tokens} tokens but the model numbers at most {max_tokens} positions")]
    InputTooLong { n_tokens: usize, max_tokens: usize },
    #[error(
        "{arch} is an encoder-decoder model: it has no {what} (`kiln generate` runs it with a \
         source text; chat templates do not apply)"
    )]
    EncoderDecoder { arch: String, what: &'static str },
    #[error("the source text is empty (nothing for the encoder to read)")]
    EmptySource,
    #[error("export: {0}")]
    Export(String),
    #[error("quantization: {0}")]
    Quantize(String),
    #[error(transparent)]
    Quant(#[from] kiln_quant::Error),
    #[error("token id {id} is outside the vocabulary ({vocab} tokens)")]
    TokenOutOfRange { id: u32, vocab: usize },
}

pub type Result<T> = std::result::Result<T, Error>;
