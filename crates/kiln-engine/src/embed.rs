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
use std::sync::Mutex;
use std::time::Instant;

use kiln_models::pooling::Pooling;
use kiln_models::{Bert, HeadKind, ModelInfo, Scratch};
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
    /// The encoder's working buffers, kept across batches.
    scratch: Mutex<Scratch>,
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
        let path = &transformer_dir(root);
        let loaded = kiln_models::load(path, on_progress)?;
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
            scratch: Mutex::default(),
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
            let h = {
                let mut scratch = self
                    .scratch
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.model
                    .forward_with(&ids, Some(&types), &batch, &mut scratch, None)?
            };
            let h = h.as_f32_slice().map_err(kiln_models::Error::from)?;
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
mod tests {
    use super::*;

    #[test]
    fn simple_grouping_like_transformers() {
        let t = |label: &str, score: f32, start: usize| TokenTag {
            label: label.into(),
            score,
            id: start as u32,
            start,
            end: start + 1,
        };
        let tokens = [
            t("B-PER", 0.9, 0),
            t("I-PER", 0.7, 1),
            t("O", 0.99, 2),
            t("I-LOC", 0.5, 3),
            t("B-LOC", 0.8, 4),
            t("I-PER", 0.6, 5),
        ];
        let g = group_entities(&tokens, &|ids| format!("{ids:?}"));
        let summary: Vec<(&str, usize, usize)> = g
            .iter()
            .map(|e| (e.entity_group.as_str(), e.start, e.end))
            .collect();
        assert_eq!(
            summary,
            vec![("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("PER", 5, 6)]
        );
        assert!((g[0].score - 0.8).abs() < 1e-6);
        assert_eq!(g[0].word, "[0, 1]");
    }

    #[test]
    fn truncation_keeps_prefix_and_suffix_specials() {
        let mut e = Encoded {
            ids: vec![101, 5, 6, 7, 8, 102],
            type_ids: vec![0; 6],
            offsets: vec![(0, 0); 6],
            special: vec![true, false, false, false, false, true],
            truncated_from: None,
        };
        truncate_keeping_specials(&mut e, &[5, 6, 7, 8], 4).unwrap();
        assert_eq!(e.ids, vec![101, 5, 6, 102]);
        assert_eq!(e.truncated_from, Some(6));
        assert_eq!(e.special, vec![true, false, false, true]);
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
    }

    fn load(name: &str) -> Encoder {
        Encoder::load(&fixture(name), &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn reference(name: &str) -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn ner_entities_match_the_transformers_pipeline() {
        let e = load("roberta");
        let r = reference("roberta");
        let texts = r["texts"].as_array().unwrap();
        for (text, want) in texts.iter().zip(r["ner_simple"].as_array().unwrap()) {
            let text = text.as_str().unwrap();
            let Classification::Tokens(got) = e.classify(text, true).unwrap() else {
                panic!("token head")
            };
            let want = want.as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{text}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!(
                    g.entity_group,
                    w["entity_group"].as_str().unwrap(),
                    "{text}"
                );
                assert_eq!(
                    (g.start as u64, g.end as u64),
                    (w["start"].as_u64().unwrap(), w["end"].as_u64().unwrap()),
                    "{text}: {g:?}"
                );
                assert!(
                    (g.score - w["score"].as_f64().unwrap() as f32).abs() < 1e-4,
                    "{text}: {g:?}"
                );
                assert_eq!(g.word, w["word"].as_str().unwrap(), "{text}");
            }
        }
    }

    #[test]
    fn token_ids_match_transformers_wordpiece_bpe_unigram() {
        for name in ["bert", "roberta", "roberta_xlm"] {
            let e = load(name);
            let r = reference(name);
            let st = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
            let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
            let o = &header["input_ids"]["data_offsets"];
            let ids: Vec<u32> = st
                [8 + n + o[0].as_u64().unwrap() as usize..8 + n + o[1].as_u64().unwrap() as usize]
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect();
            let mut at = 0;
            for text in r["texts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.as_str())
            {
                let got = e.encode(text, true).unwrap().ids;
                assert_eq!(got, ids[at..at + got.len()], "{name}: {text}");
                at += got.len();
            }
        }
    }

    #[test]
    fn sequence_labels_match_transformers() {
        for name in ["bert", "roberta_xlm", "distilbert_cls"] {
            let e = load(name);
            let r = reference(name);
            let texts = r["texts"].as_array().unwrap();
            for (text, want) in texts.iter().zip(r["predicted"].as_array().unwrap()) {
                let Some(text) = text.as_str() else { continue }; // the sentence pair
                let Classification::Sequence(labels) = e.classify(text, true).unwrap() else {
                    panic!("sequence head")
                };
                assert_eq!(labels[0].0, want.as_str().unwrap(), "{text}");
                assert_eq!(labels.len(), 3);
                assert!((labels.iter().map(|l| l.1).sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn pooled_embeddings_match_sentence_transformers_semantics() {
        use kiln_models::pooling::PoolingMode;
        for name in [
            "bert",
            "roberta",
            "distilbert",
            "roberta_xlm",
            "distilbert_cls",
        ] {
            let e = load(name);
            let r = reference(name);
            let st = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
            let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
            let tensor = |key: &str| -> Vec<f32> {
                let o = &header[key]["data_offsets"];
                let (a, b) = (
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                );
                st[8 + n + a..8 + n + b]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            // Plain texts only (the bert pair is not a single input).
            let texts: Vec<String> = r["texts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            let hidden = e.model.cfg.hidden;
            for (mode, key, normalize) in [
                (PoolingMode::Mean, "pooled_mean", false),
                (PoolingMode::Cls, "pooled_cls", false),
                (PoolingMode::Max, "pooled_max", false),
                (PoolingMode::Mean, "pooled_mean_normalized", true),
            ] {
                let got = e
                    .embed(
                        &texts,
                        &Pooling {
                            modes: vec![mode],
                            normalize,
                        },
                        3,
                        true,
                    )
                    .unwrap();
                let want = tensor(key);
                for (i, g) in got.vectors.iter().enumerate() {
                    let w = &want[i * hidden..(i + 1) * hidden];
                    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
                    assert!(err < 1e-4, "{name} {key} input {i}: rel err {err}");
                }
            }
        }
    }

    #[test]
    fn old_sentence_transformers_layout_with_a_transformer_subdirectory() {
        let dir = std::env::temp_dir().join(format!("kiln-st-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(fixture("bert"), dir.join("0_Transformer")).unwrap();
        std::fs::write(dir.join("modules.json"), r#"[{"idx":0,"name":"0","path":"0_Transformer","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#).unwrap();
        let e = Encoder::load(&dir, &mut |_, _| {});
        std::fs::remove_dir_all(&dir).unwrap();
        let e = e.unwrap();
        assert_eq!(e.max_tokens, 64);
        assert_eq!(e.pooling, Pooling::default());
    }

    #[test]
    fn bad_inputs_are_errors_or_defined_results() {
        let e = load("bert");
        // Empty and special-character-only inputs embed their special tokens ([CLS] [SEP]).
        let got = e
            .embed(
                &["".into(), "!!!".into(), "[CLS]".into()],
                &e.pooling,
                8,
                true,
            )
            .unwrap();
        assert!(got
            .vectors
            .iter()
            .all(|v| v.len() == 64 && v.iter().all(|x| x.is_finite())));
        assert_eq!(e.encode("", true).unwrap().ids.len(), 2);
        let long = "free software ".repeat(100);
        assert!(e
            .encode(&long, false)
            .unwrap_err()
            .to_string()
            .contains("maximum of 64"));
        assert_eq!(e.encode(&long, true).unwrap().ids.len(), 64);
        let err = e
            .embed(&[long], &e.pooling, 1, false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("input 1:"), "{err}");
        // Embedding models have no head; decoder checkpoints and non-models are refused.
        assert!(load("distilbert")
            .classify("hi", true)
            .unwrap_err()
            .to_string()
            .contains("no classification head"));
        let err = Encoder::load(&fixture("llama"), &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not an encoder model"), "{err}");
        assert!(Encoder::load(&fixture("minilm"), &mut |_, _| {}).is_err());
    }
}
