//! The BART family: BartForConditionalGeneration, MBartForConditionalGeneration and MarianMTModel
//! (opus-mt), one encoder-decoder with three config branches.
//!
//! Reference: Lewis et al. 2019; transformers `models/bart/modeling_bart.py`,
//! `models/mbart/modeling_mbart.py`, `models/marian/modeling_marian.py`. Embeddings are
//! `tokens * embed_scale + positions` (`embed_scale = sqrt(d_model)` with `scale_embedding`).
//! Blocks are post-norm — encoder `h = LN(x + attn(x)); out = LN(h + fc2(act(fc1(h))))`, decoder
//! with `h = LN(h + cross(h, encoder))` between — with scores scaled by 1/sqrt(head_dim). The
//! head is the shared embedding plus `final_logits_bias`.
//! Config branches (STYLE.md's limit of three):
//! 1. positions: BART/mBART learn them, stored with an offset of 2 (row `p + 2` for position
//!    `p`), which also bounds the source length; Marian uses fixed sinusoids (sinusoidal.rs).
//! 2. `layernorm_embedding` after the embedding sum: BART and mBART, not Marian.
//! 3. pre-norm (`normalize_before`, mBART): `h = x + attn(LN(x))`, and a final `layer_norm`
//!    closes each stack.

use kiln_nn::{
    Activation, Attention, AttentionSpec, Batch, CrossAttention, Embedding, KvCache, KvStore,
    LayerNorm, Linear, Mlp, SinusoidalPositions, Weights,
};
use kiln_tensor::Tensor;

use crate::config::HfConfig;
use crate::seq2seq::{seq2seq_info, Decoding, EncoderMemory, Seq2SeqInfo};
use crate::{Error, Result};

/// Learned positions are stored from row 2 on (fairseq kept rows 0/1 for padding).
const LEARNED_POSITION_OFFSET: usize = 2;
const LAYER_NORM_EPS: f32 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    Learned,
    Sinusoidal,
}

#[derive(Debug, Clone)]
pub struct BartConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_heads: usize,
    pub decoder_heads: usize,
    pub encoder_ffn: usize,
    pub decoder_ffn: usize,
    pub max_position_embeddings: usize,
    pub act: Activation,
    pub embed_scale: f32,
    pub positions: PositionKind,
    pub layernorm_embedding: bool,
    pub pre_norm: bool,
}

impl BartConfig {
    pub fn from_hf(c: &HfConfig) -> Result<BartConfig> {
        let model_type = c.str("model_type").unwrap_or("bart");
        let marian = model_type == "marian";
        let d_model = c.usize("d_model")?;
        Ok(BartConfig {
            vocab: c.usize("vocab_size")?,
            d_model,
            encoder_layers: c.usize("encoder_layers")?,
            decoder_layers: c.usize("decoder_layers")?,
            encoder_heads: c.usize("encoder_attention_heads")?,
            decoder_heads: c.usize("decoder_attention_heads")?,
            encoder_ffn: c.usize("encoder_ffn_dim")?,
            decoder_ffn: c.usize("decoder_ffn_dim")?,
            max_position_embeddings: c.usize("max_position_embeddings")?,
            act: Activation::parse(c.str("activation_function").unwrap_or("gelu"))?,
            embed_scale: if c.bool_or("scale_embedding", false) {
                (d_model as f32).sqrt()
            } else {
                1.0
            },
            positions: if marian {
                PositionKind::Sinusoidal
            } else {
                PositionKind::Learned
            },
            layernorm_embedding: !marian,
            pre_norm: model_type == "mbart" || c.bool_or("normalize_before", false),
        })
    }
}

/// Token embedding times `embed_scale` plus positions, then `layernorm_embedding` if any.
#[derive(Clone)]
struct Embeddings {
    positions: Positions,
    layernorm_embedding: Option<LayerNorm>,
}

#[derive(Clone)]
enum Positions {
    Learned(Embedding),
    Sinusoidal(SinusoidalPositions),
}

impl Embeddings {
    fn load(w: &Weights, cfg: &BartConfig) -> Result<Embeddings> {
        let n = cfg.max_position_embeddings;
        let positions = match cfg.positions {
            PositionKind::Learned => Positions::Learned(Embedding::load(
                w,
                "embed_positions.weight",
                n + LEARNED_POSITION_OFFSET,
                cfg.d_model,
            )?),
            PositionKind::Sinusoidal => {
                Positions::Sinusoidal(SinusoidalPositions::new(n, cfg.d_model, w.placement())?)
            }
        };
        let layernorm_embedding = if cfg.layernorm_embedding {
            Some(LayerNorm::load(
                w,
                "layernorm_embedding",
                cfg.d_model,
                LAYER_NORM_EPS,
                true,
            )?)
        } else {
            None
        };
        Ok(Embeddings {
            positions,
            layernorm_embedding,
        })
    }

    fn forward(&self, tokens: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let pos = match &self.positions {
            Positions::Learned(e) => {
                let ids: Vec<u32> = positions
                    .iter()
                    .map(|&p| (p + LEARNED_POSITION_OFFSET) as u32)
                    .collect();
                e.forward(&ids)?
            }
            Positions::Sinusoidal(s) => s.forward(positions)?,
        };
        let x = tokens.add(&pos)?;
        Ok(match &self.layernorm_embedding {
            Some(ln) => ln.forward(&x)?,
            None => x,
        })
    }
}

fn linear(w: &Weights, name: &str, i: usize, o: usize) -> Result<Linear> {
    Ok(Linear::load(w, name, i, o, true)?)
}

/// One block of either stack; `cross` is present in the decoder only.
#[derive(Clone)]
struct Block {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    cross: Option<(CrossAttention, LayerNorm)>,
    ffn: Mlp,
    final_layer_norm: LayerNorm,
    pre_norm: bool,
}

impl Block {
    fn load(w: &Weights, cfg: &BartConfig, decoder: bool) -> Result<Block> {
        let d = cfg.d_model;
        let (heads, ffn) = if decoder {
            (cfg.decoder_heads, cfg.decoder_ffn)
        } else {
            (cfg.encoder_heads, cfg.encoder_ffn)
        };
        let head_dim = d / heads.max(1);
        let spec = AttentionSpec {
            hidden: d,
            n_heads: heads,
            n_kv_heads: heads,
            head_dim,
            qkv_bias: true,
            o_bias: true,
            causal: decoder,
            window: None,
            rope: None,
            alibi: None,
            qk_norm: None,
        };
        let a = w.pp("self_attn");
        let self_attn = Attention::from_parts(
            linear(&a, "q_proj", d, d)?,
            linear(&a, "k_proj", d, d)?,
            linear(&a, "v_proj", d, d)?,
            linear(&a, "out_proj", d, d)?,
            spec,
        );
        let cross = if decoder {
            let c = w.pp("encoder_attn");
            Some((
                CrossAttention::from_parts(
                    linear(&c, "q_proj", d, d)?,
                    linear(&c, "k_proj", d, d)?,
                    linear(&c, "v_proj", d, d)?,
                    linear(&c, "out_proj", d, d)?,
                    heads,
                    head_dim,
                    1.0 / (head_dim as f32).sqrt(),
                ),
                LayerNorm::load(w, "encoder_attn_layer_norm", d, LAYER_NORM_EPS, true)?,
            ))
        } else {
            None
        };
        Ok(Block {
            self_attn,
            self_attn_layer_norm: LayerNorm::load(
                w,
                "self_attn_layer_norm",
                d,
                LAYER_NORM_EPS,
                true,
            )?,
            cross,
            ffn: Mlp::from_parts(
                linear(w, "fc1", d, ffn)?,
                linear(w, "fc2", ffn, d)?,
                cfg.act,
            ),
            final_layer_norm: LayerNorm::load(w, "final_layer_norm", d, LAYER_NORM_EPS, true)?,
            pre_norm: cfg.pre_norm,
        })
    }

    /// `x + f(x)` with the norm before `f` (pre-norm) or after the sum (post-norm).
    fn residual(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if self.pre_norm {
            Ok(x.add(&f(&norm.forward(x)?)?)?)
        } else {
            Ok(norm.forward(&x.add(&f(x)?)?)?)
        }
    }

    /// One block: the encoder's (`dec` = None: each sequence attends to its own rows) or the
    /// decoder's (self-attention through the KV store, then cross-attention to the memories).
    fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        dec: Option<Decoding<'_, '_>>,
    ) -> Result<Tensor> {
        let mut h = match dec {
            None => self.residual(x, &self.self_attn_layer_norm, |a| {
                Ok(self.self_attn.forward_encoder(a, batch, None)?)
            })?,
            Some(Decoding {
                kv,
                cross: step,
                memory,
            }) => {
                let h = self.residual(x, &self.self_attn_layer_norm, |a| {
                    Ok(self.self_attn.forward(a, batch, layer, kv)?)
                })?;
                match &self.cross {
                    Some((cross, norm)) => {
                        let mem = EncoderMemory::layer(memory, layer);
                        self.residual(&h, norm, |a| Ok(cross.forward(a, step, &mem)?))?
                    }
                    None => h,
                }
            }
        };
        h = self.residual(&h, &self.final_layer_norm, |a| Ok(self.ffn.forward(a)?))?;
        Ok(h)
    }
}

#[derive(Clone)]
struct Stack {
    embeddings: Embeddings,
    layers: Vec<Block>,
    /// mBART's closing norm (pre-norm stacks only).
    layer_norm: Option<LayerNorm>,
}

impl Stack {
    fn load(w: &Weights, cfg: &BartConfig, decoder: bool) -> Result<Stack> {
        let n = if decoder {
            cfg.decoder_layers
        } else {
            cfg.encoder_layers
        };
        let layers = (0..n)
            .map(|i| Block::load(&w.pp("layers").pp(i), cfg, decoder))
            .collect::<Result<Vec<_>>>()?;
        let layer_norm = if cfg.pre_norm {
            Some(LayerNorm::load(
                w,
                "layer_norm",
                cfg.d_model,
                LAYER_NORM_EPS,
                true,
            )?)
        } else {
            None
        };
        Ok(Stack {
            embeddings: Embeddings::load(w, cfg)?,
            layers,
            layer_norm,
        })
    }

    /// The encoder (`dec` = None) or the decoder over a packed step.
    fn forward(
        &self,
        tokens: &Tensor,
        batch: &Batch,
        dec: Option<(&mut dyn KvStore, &[&EncoderMemory])>,
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let x = self.embeddings.forward(tokens, &batch.positions)?;
        let n = self.layers.len();
        let x = match dec {
            None => crate::stack::layers(x, n, trace, |i, x| {
                self.layers[i].forward(x, batch, i, None)
            })?,
            Some((kv, memory)) => {
                let cross = EncoderMemory::step(batch, memory, x.device())?;
                crate::stack::run(x, n, batch, kv, trace, |i, x, kv| {
                    let dec = Decoding {
                        kv,
                        cross: &cross,
                        memory,
                    };
                    self.layers[i].forward(x, batch, i, Some(dec))
                })?
            }
        };
        match &self.layer_norm {
            Some(ln) => Ok(ln.forward(&x)?),
            None => Ok(x),
        }
    }
}

#[derive(Clone)]
pub struct Bart {
    shared: Embedding,
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
    final_logits_bias: Option<Tensor>,
    pub cfg: BartConfig,
    pub info: Seq2SeqInfo,
}

impl Bart {
    pub fn load(
        w: &Weights,
        c: &HfConfig,
        architecture: &str,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Bart> {
        let cfg = BartConfig::from_hf(c)?;
        for heads in [cfg.encoder_heads, cfg.decoder_heads] {
            if heads == 0 || cfg.d_model % heads != 0 {
                return Err(Error::BadConfig {
                    path: c.origin.clone(),
                    reason: format!("d_model {} is not a multiple of {heads} heads", cfg.d_model),
                });
            }
        }
        let m = w.pp("model");
        let shared = Embedding::load(&m, "shared.weight", cfg.vocab, cfg.d_model)?;
        let total = cfg.encoder_layers + cfg.decoder_layers;
        let encoder = Stack::load(&m.pp("encoder"), &cfg, false)?;
        on_layer(cfg.encoder_layers, total);
        let decoder = Stack::load(&m.pp("decoder"), &cfg, true)?;
        on_layer(total, total);
        let lm_head = if c.bool_or("tie_word_embeddings", true) || !w.contains("lm_head.weight") {
            Linear::tied(shared.table().clone())
        } else {
            Linear::load(w, "lm_head", cfg.d_model, cfg.vocab, false)?
        };
        let final_logits_bias = if w.contains("final_logits_bias") {
            Some(
                w.tensor("final_logits_bias", &[1, cfg.vocab])?
                    .reshape([cfg.vocab])?,
            )
        } else {
            None
        };
        // Both position kinds number at most max_position_embeddings tokens per stack.
        let max = Some(cfg.max_position_embeddings);
        let info = seq2seq_info(c, architecture, cfg.vocab, max, max)?;
        Ok(Bart {
            shared,
            encoder,
            decoder,
            lm_head,
            final_logits_bias,
            cfg,
            info,
        })
    }

    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self.shared.forward(ids)?.scale(self.cfg.embed_scale)?)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.decoder_layers, self.cfg.d_model)
    }

    pub fn encode(&self, src: &[u32], trace: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        self.encoder
            .forward(&self.embed(src)?, &Batch::single(0, src.len()), None, trace)
    }

    pub fn memory(&self, encoder_out: &Tensor) -> Result<EncoderMemory> {
        let cross = self.decoder.layers.iter().map(|b| {
            let (cross, _) = b
                .cross
                .as_ref()
                .expect("decoder blocks have cross attention");
            cross
        });
        EncoderMemory::of(cross, encoder_out)
    }

    pub fn decode(
        &self,
        tokens: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
        memory: &[&EncoderMemory],
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        self.decoder
            .forward(&self.embed(tokens)?, batch, Some((kv, memory)), trace)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let l = self.lm_head.forward(hidden)?;
        Ok(match &self.final_logits_bias {
            Some(b) => l.add(b)?,
            None => l,
        })
    }
}
