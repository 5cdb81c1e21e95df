//! Encoder-only inference: sentence embeddings (sentence-transformers pooling) and sequence /
//! token classification, over batches packed flat without padding.
//!
//! Tokenization follows sentence-transformers / transformers: special tokens added by the
//! tokenizer's post-processor, any padding or truncation stored in `tokenizer.json` ignored
//! (MiniLM's pads to 128), and inputs longer than the limit truncated at the id level to
//! `min(model positions, sentence_bert_config.json max_seq_length)` keeping the special tokens —
//! or refused, with `truncate: false`. Token classification groups word pieces into entities like
//! transformers' `pipeline("token-classification", aggregation_strategy="simple")`.

use std::path::Path;
use std::time::Instant;

use kiln_models::pooling::Pooling;
use kiln_models::{Bert, HeadKind, ModelInfo};
use kiln_nn::Batch;
use kiln_tokenizer::Tokenizer;

use crate::{Error, Result};

/// One tokenized input.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Character offsets into the text, per token (as Python's tokenizers reports them).
    pub offsets: Vec<(usize, usize)>,
    pub special: Vec<bool>,
    /// The length before truncation, when truncated.
    pub truncated_from: Option<usize>,
}

type EncodeFn = Box<dyn Fn(&str, bool) -> std::result::Result<Encoded, String> + Send + Sync>;

pub struct Encoder {
    pub model: Bert,
    pub info: ModelInfo,
    pub tokenizer: Tokenizer,
    /// The longest input in tokens, special tokens included.
    pub max_tokens: usize,
    /// The checkpoint's own pooling (modules.json), before any override.
    pub pooling: Pooling,
    encode: EncodeFn,
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    /// One row per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    pub n_tokens: usize,
    /// Inputs (by index) that were truncated, with their original token counts.
    pub truncated: Vec<(usize, usize)>,
    /// Tokenization + forward + pooling, excluding load.
    pub embed_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub entity_group: String,
    pub score: f32,
    pub word: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone)]
pub enum Classification {
    /// Every label with its softmax probability, most likely first.
    Sequence(Vec<(String, f32)>),
    Tokens(Vec<Entity>),
}

impl Encoder {
    /// Loads an encoder checkpoint directory (config.json, safetensors, tokenizer.json and, for
    /// sentence-transformers models, modules.json).
    pub fn load(root: &Path, on_progress: &mut dyn FnMut(usize, usize)) -> Result<Encoder> {
        Encoder::load_on(root, kiln_nn::Placement::default(), on_progress)
    }

    /// [`Encoder::load`] with the weights in `placement` (a device and compute dtype); pooling
    /// and the heads' softmax read the hidden states back on the host.
    pub fn load_on(
        root: &Path,
        placement: kiln_nn::Placement,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Encoder> {
        let path = &transformer_dir(root);
        let loaded = kiln_models::load_on(path, placement, on_progress)?;
        let model = match loaded.model {
            kiln_models::Model::Bert(m) => *m,
            _ => {
                let model = format!("{} ({})", path.display(), loaded.info.architecture);
                return Err(kiln_models::Error::NotEncoder { model }.into());
            }
        };
        let tj = path.join("tokenizer.json");
        if !tj.exists() {
            return Err(Error::NoTokenizer(path.display().to_string()));
        }
        let tokenizer = Tokenizer::from_file(&tj)?;
        let st_max = std::fs::read_to_string(path.join("sentence_bert_config.json"))
            .or_else(|_| std::fs::read_to_string(root.join("sentence_bert_config.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()));
        let max_tokens = st_max.map_or(model.cfg.max_tokens(), |m| {
            (m as usize).min(model.cfg.max_tokens())
        });
        let mut inner = tokenizer.inner().clone();
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::InvalidArgument(format!("tokenizer: {e}")))?;
        let encode: EncodeFn = Box::new(move |text, truncate| {
            let full = inner
                .encode_char_offsets(text, true)
                .map_err(|e| e.to_string())?;
            let mut enc = Encoded {
                ids: full.get_ids().to_vec(),
                type_ids: full.get_type_ids().to_vec(),
                offsets: full.get_offsets().to_vec(),
                special: full
                    .get_special_tokens_mask()
                    .iter()
                    .map(|&m| m == 1)
                    .collect(),
                truncated_from: None,
            };
            if enc.ids.len() > max_tokens {
                if !truncate {
                    return Err(format!(
                        "the input has {} tokens, more than the model's maximum of {max_tokens}",
                        enc.ids.len()
                    ));
                }
                let plain = inner.encode_fast(text, false).map_err(|e| e.to_string())?;
                truncate_keeping_specials(&mut enc, plain.get_ids(), max_tokens)?;
            }
            Ok(enc)
        });
        let pooling = Pooling::from_dir(root)?;
        Ok(Encoder {
            model,
            info: loaded.info,
            tokenizer,
            max_tokens,
            pooling,
            encode,
        })
    }

    pub fn encode(&self, text: &str, truncate: bool) -> Result<Encoded> {
        let enc = (self.encode)(text, truncate).map_err(Error::InvalidArgument)?;
        if enc.ids.is_empty() {
            return Err(Error::InvalidArgument(
                "the input tokenizes to no tokens".into(),
            ));
        }
        Ok(enc)
    }

    /// Embeddings of `texts`, `batch_size` inputs per forward pass (packed, so the batch size
    /// changes speed, never results).
    pub fn embed(
        &self,
        texts: &[String],
        pooling: &Pooling,
        batch_size: usize,
        truncate: bool,
    ) -> Result<Embeddings> {
        let t0 = Instant::now();
        let hidden = self.model.cfg.hidden;
        let mut out = Embeddings {
            vectors: Vec::with_capacity(texts.len()),
            n_tokens: 0,
            truncated: Vec::new(),
            embed_ms: 0.0,
        };
        for (c, chunk) in texts.chunks(batch_size.max(1)).enumerate() {
            let mut ids = Vec::new();
            let mut types = Vec::new();
            let mut lens = Vec::with_capacity(chunk.len());
            for (i, text) in chunk.iter().enumerate() {
                let idx = c * batch_size.max(1) + i;
                let e = self
                    .encode(text, truncate)
                    .map_err(|e| Error::InvalidArgument(format!("input {}: {e}", idx + 1)))?;
                if let Some(n) = e.truncated_from {
                    out.truncated.push((idx, n));
                }
                lens.push(e.ids.len());
                ids.extend(e.ids);
                types.extend(e.type_ids);
            }
            let batch = Batch::packed(&lens);
            // The hidden states come to the host for pooling (an edge: the output).
            let h = self
                .model
                .forward(&ids, Some(&types), &batch, None)?
                .try_to_vec_f32()
                .map_err(kiln_models::Error::from)?;
            for span in &batch.seqs {
                out.vectors.push(pooling.pool(
                    &h[span.start * hidden..(span.start + span.len) * hidden],
                    hidden,
                ));
            }
            out.n_tokens += ids.len();
        }
        out.embed_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(out)
    }

    /// Runs the checkpoint's classification head on one text.
    pub fn classify(&self, text: &str, truncate: bool) -> Result<Classification> {
        let labels = &self.model.cfg.labels;
        let label = |i: usize| {
            labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}"))
        };
        let e = self.encode(text, truncate)?;
        let batch = Batch::packed(&[e.ids.len()]);
        let h = self
            .model
            .forward(&e.ids, Some(&e.type_ids), &batch, None)?;
        let Some(logits) = self.model.classify(&h, &batch)? else {
            return Err(Error::InvalidArgument(format!(
                "{} has no classification head (it is not a *ForSequenceClassification or *ForTokenClassification checkpoint); use `kiln embed`",
                self.info.architecture
            )));
        };
        let probs = logits
            .softmax_last()
            .map_err(kiln_models::Error::from)?
            .to_vec_f32();
        let n_labels = logits.dims()[1];
        match self.model.cfg.head {
            HeadKind::Sequence => {
                let mut v: Vec<(String, f32)> = probs
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| (label(i), p))
                    .collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                Ok(Classification::Sequence(v))
            }
            _ => {
                let mut tokens = Vec::new();
                for (t, row) in probs.chunks(n_labels).enumerate() {
                    if e.special[t] {
                        continue;
                    }
                    let (best, &score) =
                        row.iter()
                            .enumerate()
                            .fold(
                                (0, &f32::NEG_INFINITY),
                                |b, (i, p)| if *p > *b.1 { (i, p) } else { b },
                            );
                    tokens.push(TokenTag {
                        label: label(best),
                        score,
                        id: e.ids[t],
                        start: e.offsets[t].0,
                        end: e.offsets[t].1,
                    });
                }
                Ok(Classification::Tokens(group_entities(&tokens, &|ids| {
                    self.tokenizer.decode(ids, true).unwrap_or_default()
                })))
            }
        }
    }
}

/// Where the transformer's files are: older sentence-transformers checkpoints keep them in the
/// directory of modules.json's `Transformer` module (e.g. `0_Transformer/`), newer ones at the root.
fn transformer_dir(root: &Path) -> std::path::PathBuf {
    let modules = std::fs::read_to_string(root.join("modules.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let sub = modules
        .as_ref()
        .and_then(|m| m.as_array())
        .and_then(|list| {
            list.iter()
                .find(|m| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with(".Transformer"))
                })
                .and_then(|m| m.get("path").and_then(|p| p.as_str()))
                .filter(|p| !p.is_empty())
                .map(str::to_string)
        });
    match sub {
        Some(sub) if root.join(&sub).join("config.json").exists() => root.join(sub),
        _ => root.to_path_buf(),
    }
}

/// Cuts `enc` (special tokens included) to `max` tokens by dropping the end of the text's own
/// tokens `plain`, keeping the post-processor's prefix and suffix (as tokenizers' truncation).
fn truncate_keeping_specials(
    enc: &mut Encoded,
    plain: &[u32],
    max: usize,
) -> std::result::Result<(), String> {
    let n = enc.ids.len();
    let n_special = n - plain.len().min(n);
    let prefix = (0..=n_special)
        .find(|&p| enc.ids.get(p..p + plain.len()) == Some(plain))
        .ok_or("cannot locate the text's tokens among the special tokens")?;
    let keep = max
        .checked_sub(n_special)
        .filter(|&k| k > 0)
        .ok_or(format!(
            "the model's maximum of {max} tokens leaves no room for text"
        ))?;
    let cut = prefix + keep..prefix + plain.len();
    enc.ids.drain(cut.clone());
    enc.type_ids.drain(cut.clone());
    enc.offsets.drain(cut.clone());
    enc.special.drain(cut);
    enc.truncated_from = Some(n);
    Ok(())
}

/// A non-special token's predicted label.
#[derive(Debug, Clone)]
pub struct TokenTag {
    pub label: String,
    pub score: f32,
    pub id: u32,
    pub start: usize,
    pub end: usize,
}

/// transformers' `group_entities` for aggregation_strategy="simple": consecutive tokens with the
/// same entity type join a group unless the token is tagged `B-`; groups are labelled with the
/// type, scored with the mean probability, and `O` groups are dropped.
pub fn group_entities(tokens: &[TokenTag], decode: &dyn Fn(&[u32]) -> String) -> Vec<Entity> {
    fn tag(label: &str) -> (bool, &str) {
        match label.split_once('-') {
            Some(("B", t)) => (true, t),
            Some(("I", t)) => (false, t),
            _ => (false, label),
        }
    }
    let mut groups: Vec<Vec<&TokenTag>> = Vec::new();
    for t in tokens {
        let (begin, ty) = tag(&t.label);
        match groups.last_mut() {
            Some(g) if !begin && tag(&g[g.len() - 1].label).1 == ty => g.push(t),
            _ => groups.push(vec![t]),
        }
    }
    groups
        .into_iter()
        .filter_map(|g| {
            let ty = tag(&g[0].label).1.to_string();
            if ty == "O" {
                return None;
            }
            let ids: Vec<u32> = g.iter().map(|t| t.id).collect();
            Some(Entity {
                entity_group: ty,
                score: g.iter().map(|t| t.score).sum::<f32>() / g.len() as f32,
                word: decode(&ids),
                start: g[0].start,
                end: g[g.len() - 1].end,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "tests/embed.rs"]
mod tests;
