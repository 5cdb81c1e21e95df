//! Engine errors: per-request problems (prompt too long, empty input) are distinct variants so
//! callers can report them as the user's mistake rather than an engine failure.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] kiln_models::Error),
    #[error(transparent)]
    Tokenizer(#[from] kiln_tokenizer::Error),
    #[error(transparent)]
    Gguf(#[from] kiln_gguf::Error),
    #[error(transparent)]
    Sampling(#[from] crate::SamplingError),
    #[error("the prompt has {n_tokens} tokens but the model's context is {max_context} tokens")]
    PromptTooLong { n_tokens: usize, max_context: usize },
    #[error("the prompt is empty (it tokenizes to no tokens)")]
    EmptyPrompt,
    #[error("the model has no chat template (use a plain prompt instead of --chat)")]
    NoChatTemplate,
    #[error("{0} is an encoder-decoder model: it takes a source text, not a chat (drop --chat)")]
    Seq2SeqChat(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no tokenizer found for {0} (expected tokenizer.json beside config.json)")]
    NoTokenizer(String),
}

pub type Result<T> = std::result::Result<T, Error>;
