//! kiln-tokenizer: text <-> token ids, chat templates and incremental detokenization.
//!
//! A `Tokenizer` wraps a Hugging Face `tokenizers::Tokenizer` (no hand-written BPE), loaded from a
//! `tokenizer.json` or rebuilt from GGUF `tokenizer.ggml.*` metadata (see `gguf.rs`). The GGUF path
//! is held to one acceptance criterion: the same ids as transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=..)` (tests/smollm2_gguf.rs, fixture made by
//! tools/make_reference.py). `ChatTemplate` renders Jinja chat templates with minijinja the way
//! transformers' `apply_chat_template` does; `DecodeStream` turns ids into text one at a time.
//!
//! Invariants: ids handed out are always < `vocab_size()`; `decode` rejects ids outside the
//! vocabulary instead of dropping them silently (as `tokenizers` does).

mod chat;
mod gguf;
mod pre;
mod stream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kiln_gguf::GgufFile;

pub use chat::{ChatMessage, ChatTemplate};
pub use pre::GgufCompat;
pub use stream::DecodeStream;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{context}: {source}")]
    Tokenizers {
        context: String,
        source: tokenizers::Error,
    },
    #[error(transparent)]
    Gguf(#[from] kiln_gguf::Error),
    #[error("unsupported GGUF tokenizer model `{model}` (supported: gpt2, llama)")]
    UnsupportedModel { model: String },
    #[error("unsupported GGUF pre-tokenizer `{pre}` for llama.cpp-compatible splitting")]
    UnsupportedPre { pre: String },
    #[error("GGUF metadata `{key}`: {reason}")]
    BadGguf { key: String, reason: String },
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownTokenId { id: u32, vocab_size: usize },
    #[error("no chat template: {0}")]
    NoChatTemplate(String),
    #[error("chat template `{name}`: {source}")]
    Template {
        name: String,
        source: minijinja::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn tk_err(context: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> Error {
    let context = context.into();
    move |source| Error::Tokenizers { context, source }
}

/// A tokenizer plus what generation needs to know about its special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
    special: HashSet<u32>,
    vocab_size: usize,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. If a `tokenizer_config.json` sits next to it, its `bos_token`,
    /// `eos_token` and `chat_template` are read too, and a `generation_config.json`'s
    /// `eos_token_id` (one id or a list) adds end-of-generation ids.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(tk_err(path.display().to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
        let token_field = |name: &str| -> Option<String> {
            let v = config.as_ref()?.get(name)?;
            v.as_str()
                .or_else(|| v.get("content")?.as_str())
                .map(str::to_string)
        };
        let bos_token = token_field("bos_token");
        let eos_token = token_field("eos_token");
        let chat_template = match &config {
            Some(c) => chat::template_from_config_value(c.get("chat_template"))?,
            None => None,
        };
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let mut eos_ids: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        if let Some(gen) = read_json_if_exists(&dir.join("generation_config.json"))? {
            match gen.get("eos_token_id") {
                Some(serde_json::Value::Array(ids)) => {
                    eos_ids.extend(ids.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                }
                Some(v) => eos_ids.extend(v.as_u64().map(|v| v as u32)),
                None => {}
            }
        }
        let mut unique = HashSet::new();
        eos_ids.retain(|id| unique.insert(*id));
        Ok(Tokenizer::assemble(
            inner,
            bos_id,
            eos_ids,
            bos_token,
            eos_token,
            chat_template,
        ))
    }

    /// Rebuilds the tokenizer described by a GGUF file's metadata, giving the same ids as
    /// transformers (`GgufCompat::Transformers`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        Tokenizer::from_gguf_with(gguf, GgufCompat::Transformers)
    }

    /// As `from_gguf`, choosing which reference implementation to agree with.
    pub fn from_gguf_with(gguf: &GgufFile, compat: GgufCompat) -> Result<Tokenizer> {
        let built = gguf::build(gguf, compat)?;
        let context = format!(
            "{}: tokenizer rebuilt from GGUF metadata",
            gguf.path().display()
        );
        let text = built.json.to_string();
        let inner: tokenizers::Tokenizer = text.parse().map_err(tk_err(context))?;
        Ok(Tokenizer::assemble(
            inner,
            built.bos_id,
            built.eos_ids,
            built.bos_token,
            built.eos_token,
            built.chat_template,
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        chat_template: Option<String>,
    ) -> Tokenizer {
        let mut special: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        special.extend(bos_id);
        special.extend(eos_ids.iter().copied());
        let vocab_size = inner.get_vocab_size(true);
        Tokenizer {
            inner,
            bos_id,
            eos_ids,
            bos_token,
            eos_token,
            chat_template,
            special,
            vocab_size,
        }
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (BOS/EOS if the
    /// tokenizer adds them). Special tokens written in the text are always matched whole.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(tk_err(format!("encoding {} bytes of text", text.len())))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`. Fails on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(tk_err(format!("decoding {} ids", ids.len())))
    }

    /// A streaming detokenizer borrowing this tokenizer.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special_tokens)
    }

    /// Number of ids, added tokens included (every id below this decodes).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token's text as stored in the vocabulary (byte-level tokens stay in GPT-2's alphabet).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Ids that end generation (eos, end-of-turn, ...), deduplicated, the primary eos first.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Special (control) tokens, bos and eos.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The chat template shipped with the tokenizer (GGUF `tokenizer.chat_template` or
    /// `tokenizer_config.json`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The wrapped `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

pub(crate) fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
