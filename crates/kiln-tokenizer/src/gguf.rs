//! Rebuilds a Hugging Face `tokenizers` tokenizer from GGUF `tokenizer.ggml.*` metadata.
//!
//! Reference: transformers 5.24 `integrations/gguf/gguf_tokenizer_mapping.py` (the ids we must
//! match) and llama.cpp `src/llama-vocab.cpp` (what the keys mean). We write the equivalent
//! `tokenizer.json` document and let `tokenizers` load it, rather than hand-writing BPE; the JSON
//! format is the library's stable interface, and the result can be diffed against
//! `tok.backend_tokenizer.to_str()` from transformers.
//!
//! - `gpt2`: byte-level BPE from tokens + merges. Tokens that use characters outside the byte
//!   alphabet are re-spelled through it (as transformers does); split regex from `pre.rs`.
//! - `llama`: SentencePiece-style BPE: `Metaspace("▁", prepend first)`, byte fallback to `<0xNN>`
//!   tokens, merges from the file or, when absent, recovered from token scores exactly like
//!   transformers' `generate_merges`.
//!
//! Control tokens (type 3) become special added tokens (byte-level: only those spelled in the byte
//! alphabet, as transformers does; a llama.cpp mislabel otherwise) and user-defined tokens (type 4)
//! non-special added tokens, so both are matched whole in the input.
//!
//! Deviation kept on purpose in `Transformers` mode: transformers ignores
//! `tokenizer.ggml.add_space_prefix` (always prepends "▁"); `LlamaCpp` mode honours it.

use std::collections::{HashMap, HashSet};

use kiln_gguf::GgufFile;
use serde_json::{json, Map, Value as Json};

use crate::pre::{self, GgufCompat};
use crate::{Error, Result};

const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Control-token texts llama.cpp treats as end-of-generation (llama-vocab.cpp, `special_eog_ids`).
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<|end_of_text|>",
];

/// What `from_gguf` needs besides the `tokenizers` document.
pub(crate) struct GgufTokenizer {
    pub json: Json,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
}

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::BadGguf {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn optional<T>(r: kiln_gguf::Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kiln_gguf::Error::MissingKey { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the rest to U+0100...
pub(crate) fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // Every code here is below 0x200, a valid scalar value.
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    out
}

pub(crate) fn build(gguf: &GgufFile, compat: GgufCompat) -> Result<GgufTokenizer> {
    let model = gguf.get_str("tokenizer.ggml.model")?;
    let byte_level = match model {
        "gpt2" => true,
        "llama" => false,
        other => {
            return Err(Error::UnsupportedModel {
                model: other.to_string(),
            })
        }
    };
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
    let n_tokens = tokens.len();
    let types = optional(gguf.get_i32_array("tokenizer.ggml.token_type"))?.unwrap_or_default();
    if !types.is_empty() && types.len() != n_tokens {
        return Err(bad(
            "tokenizer.ggml.token_type",
            format!("{} entries for {n_tokens} tokens", types.len()),
        ));
    }
    let id_of = |key: &str| -> Result<Option<u32>> {
        match optional(gguf.get_u32(key))? {
            Some(id) if id as usize >= n_tokens => {
                Err(bad(key, format!("id {id} >= {n_tokens} tokens")))
            }
            other => Ok(other),
        }
    };
    let bos_id = id_of("tokenizer.ggml.bos_token_id")?;
    let eos_id = id_of("tokenizer.ggml.eos_token_id")?;
    let unk_id = id_of("tokenizer.ggml.unknown_token_id")?;
    let pad_id = id_of("tokenizer.ggml.padding_token_id")?;
    let text = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());

    // transformers: sentencepiece vocabularies default to BOS on (llama.cpp does the same).
    let add_bos = optional(gguf.get_bool("tokenizer.ggml.add_bos_token"))?.unwrap_or(!byte_level);
    let add_eos = optional(gguf.get_bool("tokenizer.ggml.add_eos_token"))?.unwrap_or(false);

    let alphabet = byte_alphabet();
    let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
    let spelled = |t: &str| t.chars().all(|c| in_alphabet.contains(&c));
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n_tokens);
    for (id, t) in tokens.iter().enumerate() {
        let key = if byte_level && !spelled(t) {
            t.bytes().map(|b| alphabet[b as usize]).collect()
        } else {
            t.to_string()
        };
        vocab.insert(key, id as u32);
    }

    let merges = match optional(gguf.get_str_array("tokenizer.ggml.merges"))? {
        Some(merges) => parse_merges(&merges)?,
        None if byte_level => {
            return Err(bad(
                "tokenizer.ggml.merges",
                "missing (needed for a gpt2 vocabulary)",
            ))
        }
        None => {
            let scores = gguf.get_f32_array("tokenizer.ggml.scores")?;
            if scores.len() != n_tokens {
                return Err(bad(
                    "tokenizer.ggml.scores",
                    format!("{} entries for {n_tokens} tokens", scores.len()),
                ));
            }
            generate_merges(&tokens, &scores, &vocab)
        }
    };

    // Added tokens: transformers adds control tokens, then the user-defined ones; the named
    // special tokens (bos/eos/unk/pad) are special too.
    let mut added: Vec<(u32, &str, bool)> = Vec::new();
    let mut seen = HashSet::new();
    for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == CONTROL && (!byte_level || spelled(t)) && seen.insert(*t) {
            added.push((vocab.get(*t).copied().unwrap_or(id as u32), t, true));
        }
    }
    for id in [bos_id, eos_id, unk_id, pad_id].into_iter().flatten() {
        let t = tokens[id as usize];
        if vocab.contains_key(t) && seen.insert(t) {
            added.push((vocab[t], t, true));
        }
    }
    for (t, &ty) in tokens.iter().zip(&types) {
        if ty == USER_DEFINED && vocab.contains_key(*t) && seen.insert(*t) {
            added.push((vocab[*t], t, false));
        }
    }
    added.sort_by_key(|a| a.0);
    let added_json: Vec<Json> = added
        .iter()
        .map(|&(id, content, special)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special})
        })
        .collect();

    let (pre_tokenizer, decoder) = if byte_level {
        let pre = optional(gguf.get_str("tokenizer.ggml.pre"))?.unwrap_or("default");
        let splits = pre::splits(compat, pre).ok_or_else(|| Error::UnsupportedPre {
            pre: pre.to_string(),
        })?;
        (
            byte_level_pre(&splits),
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        )
    } else {
        let prefix = match compat {
            GgufCompat::Transformers => true,
            GgufCompat::LlamaCpp => {
                optional(gguf.get_bool("tokenizer.ggml.add_space_prefix"))?.unwrap_or(true)
            }
        };
        spm_pre_and_decoder(prefix)
    };

    let bos_text = text(bos_id);
    let eos_text = text(eos_id);
    let post = post_processor(
        if add_bos {
            bos_id.zip(bos_text.clone())
        } else {
            None
        },
        if add_eos {
            eos_id.zip(eos_text.clone())
        } else {
            None
        },
    );
    let merges_json: Vec<Json> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    let vocab_json: Map<String, Json> = vocab.into_iter().map(|(k, v)| (k, json!(v))).collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": !byte_level, "byte_fallback": !byte_level, "ignore_merges": false,
            "vocab": vocab_json, "merges": merges_json,
        },
    });

    let mut eos_ids: Vec<u32> = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = id_of(key)? {
            eos_ids.push(id);
        }
    }
    for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == CONTROL && EOG_NAMES.contains(t) {
            eos_ids.push(id as u32);
        }
    }
    let mut unique = HashSet::new();
    eos_ids.retain(|id| unique.insert(*id));

    Ok(GgufTokenizer {
        json: doc,
        bos_id,
        eos_ids,
        bos_token: bos_text,
        eos_token: eos_text,
        chat_template: optional(gguf.get_str("tokenizer.chat_template"))?.map(str::to_string),
    })
}

fn parse_merges(merges: &[&str]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut parts = m.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                _ => Err(bad(
                    "tokenizer.ggml.merges",
                    format!("entry #{i} {m:?} is not two space-separated pieces"),
                )),
            }
        })
        .collect()
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens is a merge; within a token, ordered by the pieces' ids; overall, by (score, left length,
/// right length) descending, ties kept in token order (Python's sort is stable, also reversed).
/// Lengths count code points, as Python's `len` does.
fn generate_merges(
    tokens: &[&str],
    scores: &[f32],
    vocab: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    // Python's dict(zip(tokens, scores)): first position, last score.
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for t in order {
        let score = score_of[t];
        let mut local: Vec<(&str, &str, u32, u32)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = t.split_at(i);
                Some((l, r, *vocab.get(l)?, *vocab.get(r)?))
            })
            .collect();
        local.sort_by_key(|m| (m.2, m.3));
        merges.extend(
            local
                .into_iter()
                .map(|(l, r, _, _)| (l, r, score, l.chars().count(), r.chars().count())),
        );
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

fn byte_level_pre(splits: &[&str]) -> Json {
    if splits.is_empty() {
        return json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    }
    let mut seq: Vec<Json> = splits
        .iter()
        .map(|re| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false}))
        .collect();
    seq.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
    json!({"type": "Sequence", "pretokenizers": seq})
}

fn spm_pre_and_decoder(prefix: bool) -> (Json, Json) {
    let pre = json!({"type": "Metaspace", "replacement": "▁",
                     "prepend_scheme": if prefix { "first" } else { "never" }, "split": false});
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    (pre, json!({"type": "Sequence", "decoders": decoders}))
}

/// transformers' `update_post_processor`: "[bos ]$A[ eos]".
fn post_processor(bos: Option<(u32, String)>, eos: Option<(u32, String)>) -> Json {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special_tokens = Map::new();
    for (part, type_id) in [("A", 0), ("B", 1)] {
        let target = if part == "A" { &mut single } else { &mut pair };
        if let Some((_, t)) = &bos {
            target.push(special(t, type_id));
        }
        target.push(seq(part, type_id));
        if let Some((_, t)) = &eos {
            target.push(special(t, type_id));
        }
    }
    let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
    for (id, t) in bos.iter().chain(eos.iter()) {
        special_tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_matches_gpt2() {
        let a = byte_alphabet();
        assert_eq!(a[b'!' as usize], '!');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[173], '\u{143}');
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn generated_merges_follow_scores() {
        let tokens = ["a", "b", "ab", "abb", "bb"];
        let scores = [0.0, 0.0, -1.0, -3.0, -2.0];
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = generate_merges(&tokens, &scores, &vocab);
        let flat: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(flat, [("a", "b"), ("b", "b"), ("ab", "b"), ("a", "bb")]);
    }
}
