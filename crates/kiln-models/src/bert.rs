//! BERT-family encoders: BertModel/BertFor* (and MiniLM checkpoints, which are BERT-shaped),
//! RobertaModel/RobertaFor*, XLM-RoBERTa and CamemBERT. DistilBERT shares these blocks with its own
//! weight names (distilbert.rs).
//!
//! Reference: transformers `models/bert/modeling_bert.py`, `models/roberta/modeling_roberta.py`.
//! Embeddings = LayerNorm(word + learned absolute position + token type); each block is
//! post-norm: `h = LN(x + attn(x)); out = LN(h + ffn(h))`, GELU FFN, bidirectional attention.
//! Config branches (at most three, STYLE.md): RoBERTa numbers positions from `pad_token_id + 1`
//! counting only non-padding tokens (`create_position_ids_from_input_ids`); a checkpoint may
//! carry no token-type table (DistilBERT); the task head (none, sequence or token
//! classification) follows `architectures`.
//!
//! Inputs are packed flat: the sequences of a batch back to back with a `SeqSpan` each, never
//! padded, so no output depends on what else is in the batch: one gemm per Linear over all
//! tokens, and one encoder attention call per layer (`Attention::forward_encoder`) in which each
//! sequence sees only its own rows. Every op is a tensor op, so the same code runs on any
//! device the weights were placed on.

use kiln_nn::{Activation, Attention, AttentionSpec, Batch, Embedding, LayerNorm, Linear, Weights};
use kiln_tensor::{Tensor, UnaryOp};

use crate::config::HfConfig;
use crate::{Error, Result};

/// Which task head sits on the encoder, from the checkpoint's `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    None,
    /// One label distribution per sequence, from the first (`[CLS]`/`<s>`) token.
    Sequence,
    /// One label distribution per token (NER).
    Token,
}

impl HeadKind {
    pub fn from_architecture(arch: &str) -> HeadKind {
        if arch.ends_with("ForSequenceClassification") {
            HeadKind::Sequence
        } else if arch.ends_with("ForTokenClassification") {
            HeadKind::Token
        } else {
            HeadKind::None
        }
    }
}

#[derive(Debug, Clone)]
pub struct BertConfig {
    /// The checkpoint's architecture (`BertModel`, `RobertaForTokenClassification`, ...).
    pub architecture: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub vocab: usize,
    pub max_position_embeddings: usize,
    /// 0 when the checkpoint has no token-type embeddings.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub act: Activation,
    /// RoBERTa-style positions: `Some(padding_idx)`.
    pub padding_idx_positions: Option<u32>,
    pub head: HeadKind,
    /// `id2label` of the config, by id (`LABEL_i` where missing).
    pub labels: Vec<String>,
}

impl BertConfig {
    pub fn from_hf(c: &HfConfig, arch: &str) -> Result<BertConfig> {
        let model_type = c.str("model_type").unwrap_or("bert");
        let roberta = matches!(model_type, "roberta" | "xlm-roberta" | "camembert")
            || arch.starts_with("Roberta")
            || arch.starts_with("XLMRoberta")
            || arch.starts_with("Camembert");
        if let Some(p) = c.str("position_embedding_type") {
            if p != "absolute" {
                return Err(Error::BadConfig {
                    path: c.origin.clone(),
                    reason: format!(
                        "position_embedding_type `{p}` is not supported (only absolute)"
                    ),
                });
            }
        }
        Ok(BertConfig {
            architecture: arch.to_string(),
            hidden: c.usize("hidden_size")?,
            intermediate: c.usize("intermediate_size")?,
            n_layers: c.usize("num_hidden_layers")?,
            n_heads: c.usize("num_attention_heads")?,
            vocab: c.usize("vocab_size")?,
            max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(512),
            type_vocab_size: c.opt_usize("type_vocab_size")?.unwrap_or(2),
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)? as f32,
            act: Activation::parse(c.str("hidden_act").unwrap_or("gelu"))?,
            padding_idx_positions: roberta
                .then(|| c.opt_usize("pad_token_id").ok().flatten().unwrap_or(1) as u32),
            head: HeadKind::from_architecture(arch),
            labels: labels(c),
        })
    }

    /// The longest input (special tokens included) the position table can number.
    pub fn max_tokens(&self) -> usize {
        match self.padding_idx_positions {
            Some(pad) => self
                .max_position_embeddings
                .saturating_sub(pad as usize + 1),
            None => self.max_position_embeddings,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads.max(1)
    }

    pub(crate) fn attention_spec(&self) -> AttentionSpec {
        AttentionSpec {
            hidden: self.hidden,
            n_heads: self.n_heads,
            n_kv_heads: self.n_heads,
            head_dim: self.head_dim(),
            qkv_bias: true,
            o_bias: true,
            causal: false,
            window: None,
            rope: None,
            alibi: None,
            qk_norm: None,
        }
    }
}

/// `id2label` as a vector indexed by id.
pub(crate) fn labels(c: &HfConfig) -> Vec<String> {
    let Some(map) = c.json.get("id2label").and_then(|v| v.as_object()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (k, v) in map {
        if let (Ok(i), Some(name)) = (k.parse::<usize>(), v.as_str()) {
            if out.len() <= i {
                out.resize_with(i + 1, String::new);
            }
            out[i] = name.to_string();
        }
    }
    for (i, l) in out.iter_mut().enumerate() {
        if l.is_empty() {
            *l = format!("LABEL_{i}");
        }
    }
    out
}

/// One post-norm encoder block.
#[derive(Clone)]
pub(crate) struct Block {
    pub(crate) attention: Attention,
    pub(crate) attention_norm: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    pub(crate) output_norm: LayerNorm,
}

impl Block {
    /// `x (n_tokens, hidden) -> (n_tokens, hidden)`.
    fn forward(&self, x: Tensor, batch: &Batch, act: Activation) -> Result<Tensor> {
        let a = self.attention.forward_encoder(&x, batch, None)?;
        let h = self.attention_norm.forward_residual(x, &a)?; // h = LN(x + attn(x))
        let f = self
            .output
            .forward(&act.apply(&self.intermediate.forward(&h)?)?)?;
        Ok(self.output_norm.forward_residual(h, &f)?) // out = LN(h + ffn(h))
    }
}

/// A classification head: `out(act(dense(features)))` for sequence heads (BERT's pooler + tanh,
/// RoBERTa's `classifier.dense` + tanh, DistilBERT's `pre_classifier` + ReLU), or a single
/// `classifier` over every token.
#[derive(Clone)]
pub(crate) enum Head {
    Sequence {
        dense: Linear,
        tanh: bool,
        out: Linear,
    },
    Token {
        classifier: Linear,
    },
}

#[derive(Clone)]
pub struct Bert {
    pub(crate) word_embeddings: Embedding,
    pub(crate) position_embeddings: Embedding,
    pub(crate) token_type_embeddings: Option<Embedding>,
    pub(crate) embeddings_norm: LayerNorm,
    pub(crate) layers: Vec<Block>,
    pub(crate) head: Option<Head>,
    pub cfg: BertConfig,
}

impl Bert {
    pub fn load(
        w: &Weights,
        cfg: BertConfig,
        prefix: &str,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Bert> {
        // Task checkpoints nest the encoder under `bert.`/`roberta.`; bare models do not.
        let m = if w.contains(&format!("{prefix}.embeddings.word_embeddings.weight")) {
            w.pp(prefix)
        } else {
            w.clone()
        };
        let e = m.pp("embeddings");
        let (h, eps) = (cfg.hidden, cfg.layer_norm_eps);
        let token_type_embeddings =
            if cfg.type_vocab_size > 0 && e.contains("token_type_embeddings.weight") {
                Some(Embedding::load(
                    &e,
                    "token_type_embeddings.weight",
                    cfg.type_vocab_size,
                    h,
                )?)
            } else {
                None
            };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = m.pp("encoder").pp("layer").pp(i);
            let (a, o) = (l.pp("attention").pp("self"), l.pp("attention").pp("output"));
            let attention = Attention::from_parts(
                Linear::load(&a, "query", h, h, true)?,
                Linear::load(&a, "key", h, h, true)?,
                Linear::load(&a, "value", h, h, true)?,
                Linear::load(&o, "dense", h, h, true)?,
                cfg.attention_spec(),
            );
            layers.push(Block {
                attention,
                attention_norm: LayerNorm::load(&o, "LayerNorm", h, eps, true)?,
                intermediate: Linear::load(
                    &l.pp("intermediate"),
                    "dense",
                    h,
                    cfg.intermediate,
                    true,
                )?,
                output: Linear::load(&l.pp("output"), "dense", cfg.intermediate, h, true)?,
                output_norm: LayerNorm::load(&l.pp("output"), "LayerNorm", h, eps, true)?,
            });
            on_layer(i + 1, cfg.n_layers);
        }
        let n_labels = cfg.labels.len().max(1);
        let head = match cfg.head {
            HeadKind::None => None,
            HeadKind::Token => Some(Head::Token {
                classifier: Linear::load(w, "classifier", h, n_labels, true)?,
            }),
            HeadKind::Sequence if w.contains("classifier.out_proj.weight") => {
                Some(Head::Sequence {
                    dense: Linear::load(&w.pp("classifier"), "dense", h, h, true)?,
                    tanh: true,
                    out: Linear::load(&w.pp("classifier"), "out_proj", h, n_labels, true)?,
                })
            }
            HeadKind::Sequence => Some(Head::Sequence {
                dense: Linear::load(&m.pp("pooler"), "dense", h, h, true)?,
                tanh: true,
                out: Linear::load(w, "classifier", h, n_labels, true)?,
            }),
        };
        Ok(Bert {
            word_embeddings: Embedding::load(&e, "word_embeddings.weight", cfg.vocab, h)?,
            position_embeddings: Embedding::load(
                &e,
                "position_embeddings.weight",
                cfg.max_position_embeddings,
                h,
            )?,
            token_type_embeddings,
            embeddings_norm: LayerNorm::load(&e, "LayerNorm", h, eps, true)?,
            layers,
            head,
            cfg,
        })
    }

    /// Position ids of a packed batch: `0..len` per sequence, or RoBERTa's numbering from
    /// `padding_idx + 1` that skips padding tokens.
    fn position_ids(&self, tokens: &[u32], batch: &Batch) -> Vec<u32> {
        let mut pos = vec![0u32; tokens.len()];
        for span in &batch.seqs {
            let rows = span.start..span.start + span.len;
            match self.cfg.padding_idx_positions {
                None => pos[rows]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, p)| *p = i as u32),
                Some(pad) => {
                    let mut count = 0;
                    for (p, &t) in pos[rows.clone()].iter_mut().zip(&tokens[rows]) {
                        if t != pad {
                            count += 1;
                            *p = pad + count;
                        } else {
                            *p = pad;
                        }
                    }
                }
            }
        }
        pos
    }

    /// Final hidden states `(n_tokens, hidden)` of a packed batch, on the model's device.
    /// `type_ids` defaults to all zeros. With `trace`, also the embedding output and every
    /// layer's output.
    pub fn forward(
        &self,
        tokens: &[u32],
        type_ids: Option<&[u32]>,
        batch: &Batch,
        mut trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let n = tokens.len();
        if let Some(span) = batch.seqs.iter().find(|s| s.len > self.cfg.max_tokens()) {
            return Err(Error::InputTooLong {
                n_tokens: span.len,
                max_tokens: self.cfg.max_tokens(),
            });
        }
        // The spans must tile the tokens in order (what `Batch::packed` builds).
        let mut at = 0;
        for span in &batch.seqs {
            if span.start != at {
                break;
            }
            at += span.len;
        }
        if at != n || batch.n_tokens() != n || type_ids.is_some_and(|t| t.len() != n) {
            let spans: Vec<usize> = batch.seqs.iter().map(|s| s.len).collect();
            return Err(kiln_tensor::Error::ShapeMismatch {
                op: "bert batch (tokens vs sequence spans)",
                lhs: vec![n],
                rhs: spans,
            }
            .into());
        }
        let mut e = self.word_embeddings.forward(tokens)?;
        e = e.add(
            &self
                .position_embeddings
                .forward(&self.position_ids(tokens, batch))?,
        )?;
        if let Some(tt) = &self.token_type_embeddings {
            let zeros;
            let ids = match type_ids {
                Some(t) => t,
                None => {
                    zeros = vec![0u32; n];
                    &zeros
                }
            };
            e = e.add(&tt.forward(ids)?)?;
        }
        let mut x = self.embeddings_norm.forward(&e)?; // (n_tokens, hidden)
        for layer in &self.layers {
            if let Some(t) = trace.as_deref_mut() {
                t.push(x.clone());
            }
            x = layer.forward(x, batch, self.cfg.act)?;
        }
        if let Some(t) = trace {
            t.push(x.clone());
        }
        Ok(x)
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Head logits: `(n_seqs, n_labels)` for a sequence head (from each sequence's first token),
    /// `(n_tokens, n_labels)` for a token head; `None` without a head.
    pub fn classify(&self, hidden: &Tensor, batch: &Batch) -> Result<Option<Tensor>> {
        match &self.head {
            None => Ok(None),
            Some(Head::Token { classifier }) => Ok(Some(classifier.forward(hidden)?)),
            Some(Head::Sequence { dense, tanh, out }) => {
                let firsts: Vec<u32> = batch.seqs.iter().map(|s| s.start as u32).collect();
                let cls = hidden.gather_rows(&firsts)?; // (n_seqs, hidden)
                let d = dense.forward(&cls)?;
                let d = d.unary(if *tanh { UnaryOp::Tanh } else { UnaryOp::Relu })?;
                Ok(Some(out.forward(&d)?))
            }
        }
    }
}
