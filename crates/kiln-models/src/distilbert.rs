//! DistilBERT: the BERT encoder of bert.rs (same post-norm blocks, same forward) under its own
//! weight and config names, without token-type embeddings.
//!
//! Reference: transformers `models/distilbert/modeling_distilbert.py`. Names: `q_lin`/`k_lin`/
//! `v_lin`/`out_lin`, `sa_layer_norm`, `ffn.lin1`/`ffn.lin2`, `output_layer_norm`; LayerNorm eps
//! is fixed at 1e-12; config keys `dim`, `hidden_dim`, `n_layers`, `n_heads`, `activation`.
//! Kept apart from bert.rs because the names would be a fourth config branch there.

use kiln_nn::{Activation, Attention, LayerNorm, Linear, Weights};

use crate::bert::{labels, Bert, BertConfig, Block, Head, HeadKind};
use crate::config::HfConfig;
use crate::Result;

pub fn config(c: &HfConfig, arch: &str) -> Result<BertConfig> {
    Ok(BertConfig {
        architecture: arch.to_string(),
        hidden: c.usize("dim")?,
        intermediate: c.usize("hidden_dim")?,
        n_layers: c.usize("n_layers")?,
        n_heads: c.usize("n_heads")?,
        vocab: c.usize("vocab_size")?,
        max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(512),
        type_vocab_size: 0,
        layer_norm_eps: 1e-12,
        act: Activation::parse(c.str("activation").unwrap_or("gelu"))?,
        padding_idx_positions: None,
        head: HeadKind::from_architecture(arch),
        labels: labels(c),
    })
}

pub fn load(w: &Weights, cfg: BertConfig, on_layer: &mut dyn FnMut(usize, usize)) -> Result<Bert> {
    let m = if w.contains("distilbert.embeddings.word_embeddings.weight") {
        w.pp("distilbert")
    } else {
        w.clone()
    };
    let e = m.pp("embeddings");
    let (h, eps) = (cfg.hidden, cfg.layer_norm_eps);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let l = m.pp("transformer").pp("layer").pp(i);
        let a = l.pp("attention");
        let attention = Attention::from_parts(
            Linear::load(&a, "q_lin", h, h, true)?,
            Linear::load(&a, "k_lin", h, h, true)?,
            Linear::load(&a, "v_lin", h, h, true)?,
            Linear::load(&a, "out_lin", h, h, true)?,
            cfg.attention_spec(),
        );
        layers.push(Block {
            attention,
            attention_norm: LayerNorm::load(&l, "sa_layer_norm", h, eps, true)?,
            intermediate: Linear::load(&l.pp("ffn"), "lin1", h, cfg.intermediate, true)?,
            output: Linear::load(&l.pp("ffn"), "lin2", cfg.intermediate, h, true)?,
            output_norm: LayerNorm::load(&l, "output_layer_norm", h, eps, true)?,
        });
        on_layer(i + 1, cfg.n_layers);
    }
    let n_labels = cfg.labels.len().max(1);
    let head = match cfg.head {
        HeadKind::None => None,
        HeadKind::Token => Some(Head::Token {
            classifier: Linear::load(w, "classifier", h, n_labels, true)?,
        }),
        HeadKind::Sequence => Some(Head::Sequence {
            dense: Linear::load(w, "pre_classifier", h, h, true)?,
            tanh: false,
            out: Linear::load(w, "classifier", h, n_labels, true)?,
        }),
    };
    Ok(Bert {
        word_embeddings: kiln_nn::Embedding::load(&e, "word_embeddings.weight", cfg.vocab, h)?,
        position_embeddings: kiln_nn::Embedding::load(
            &e,
            "position_embeddings.weight",
            cfg.max_position_embeddings,
            h,
        )?,
        token_type_embeddings: None,
        embeddings_norm: LayerNorm::load(&e, "LayerNorm", h, eps, true)?,
        layers,
        head,
        cfg,
    })
}
