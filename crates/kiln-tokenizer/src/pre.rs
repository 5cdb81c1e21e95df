//! Pre-tokenizer split regexes for byte-level BPE vocabularies read from GGUF, keyed by
//! `tokenizer.ggml.pre`.
//!
//! Two tables, because the two references disagree:
//! - `GgufCompat::Transformers` mirrors transformers' `GGUF_PRE_TOKENIZER_SPLITS`
//!   (integrations/gguf/gguf_tokenizer_mapping.py, transformers 5.24): a listed pre type gets its
//!   regex, any other (including "smollm", "gpt2", "default", "starcoder") gets GPT-2's
//!   `ByteLevel(use_regex=true)`.
//! - `GgufCompat::LlamaCpp` mirrors llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp): a list of
//!   regexes applied one after the other, e.g. smollm/starcoder = single digits, then GPT-2's.
//!   Unknown pre types are an error there, as in llama.cpp.
//!
//! Each regex list becomes `Sequence[Split(re, Isolated)..., ByteLevel(use_regex=false)]`, which is
//! what llama.cpp's `unicode_regex_split` does: every regex splits the pieces of the previous one,
//! and text a regex does not match stays a piece of its own.

/// GPT-2's split (the one `ByteLevel(use_regex=true)` applies).
pub(crate) const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT list (used for pre = "default").
const LLAMACPP_DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];

/// Which reference a GGUF tokenizer is rebuilt to agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufCompat {
    /// Token ids identical to transformers' `AutoTokenizer.from_pretrained(.., gguf_file=..)`.
    #[default]
    Transformers,
    /// Token ids as llama.cpp's `llama_tokenize` gives them.
    LlamaCpp,
}

/// The split regexes for a pre type, or `None` when the pre type is unknown to `compat`.
/// An empty list means plain `ByteLevel(use_regex=true)` (GPT-2's split).
pub(crate) fn splits(compat: GgufCompat, pre: &str) -> Option<Vec<&'static str>> {
    match compat {
        GgufCompat::Transformers => Some(match pre {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => vec![LLAMA3],
            "tekken" => vec![TEKKEN],
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => vec![QWEN2],
            "qwen35" => vec![QWEN35],
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => vec![GPT4O],
            _ => vec![],
        }),
        GgufCompat::LlamaCpp => Some(match pre {
            "default" => LLAMACPP_DEFAULT.to_vec(),
            "gpt2" | "mpt" | "olmo" | "jais" => vec![GPT2],
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => {
                vec![r"\p{N}", GPT2]
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "dbrx" | "smaug-bpe" => vec![LLAMA3],
            "tekken" => vec![TEKKEN],
            "qwen2" | "deepseek-r1-qwen" | "megrez" => vec![QWEN2],
            "qwen35" => vec![QWEN35],
            "gpt-4o" | "llama4" | "minimax-m2" => vec![GPT4O],
            _ => return None,
        }),
    }
}
