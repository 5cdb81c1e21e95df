//! T5ForConditionalGeneration: T5 v1.0 (ReLU feed-forward, tied head) and v1.1 / Flan-T5 (gated
//! GELU, untied head).
//!
//! Reference: Raffel et al. 2020; transformers `models/t5/modeling_t5.py`. Blocks are pre-norm
//! with T5's LayerNorm (an RMS norm: no mean, no bias): encoder `h = x + attn(ln(x));
//! out = h + ff(ln(h))`, decoder adds `h = h + cross(ln(h), encoder)` between. Attention scores
//! are not scaled; instead each stack's first layer holds a relative position bias (buckets of
//! key − query distance; bidirectional in the encoder, causal in the decoder) that the stack
//! computes once per step and adds in every layer. One embedding (`shared`) feeds both stacks.
//! With a tied head (`tie_word_embeddings`, or transformers 5's `scale_decoder_outputs`) the
//! decoder output is multiplied by `d_model^-0.5` before `lm_head = shared`.
//! Config branches: the feed-forward (`feed_forward_proj`: `relu` / `gated-gelu`), the head.

use kiln_nn::{
    Activation, Attention, AttentionSpec, Batch, CrossAttention, Embedding, GatedMlp, KvCache,
    KvStore, Linear, Mlp, PositionBias, RelativePositionBias, RmsNorm, Weights,
};
use kiln_tensor::Tensor;

use crate::config::HfConfig;
use crate::seq2seq::{seq2seq_info, Decoding, EncoderMemory, Seq2SeqInfo};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct T5Config {
    pub vocab: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub n_decoder_layers: usize,
    pub num_buckets: usize,
    pub max_distance: usize,
    pub eps: f32,
    pub act: Activation,
    pub gated: bool,
    /// Multiply the decoder output by `d_model^-0.5` before the head.
    pub scale_decoder_outputs: bool,
    /// `n_positions` (or `max_position_embeddings`) when the config has it: the longest source
    /// accepted. Relative positions themselves have no limit.
    pub n_positions: Option<usize>,
}

impl T5Config {
    pub fn from_hf(c: &HfConfig) -> Result<T5Config> {
        let ff = c.str("feed_forward_proj").unwrap_or("relu");
        let (gated, act_name) = match ff.split_once('-') {
            Some(("gated", a)) => (true, a),
            None => (false, ff),
            _ => {
                return Err(Error::BadConfig {
                    path: c.origin.clone(),
                    reason: format!("feed_forward_proj `{ff}` is not `ACT` or `gated-ACT`"),
                })
            }
        };
        // transformers maps "gated-gelu" to the tanh approximation (gelu_new).
        let act = if gated && act_name == "gelu" {
            Activation::GeluTanh
        } else {
            Activation::parse(act_name)?
        };
        let n_layers = c.usize("num_layers")?;
        let tied = c.bool_or("tie_word_embeddings", true);
        Ok(T5Config {
            vocab: c.usize("vocab_size")?,
            d_model: c.usize("d_model")?,
            d_kv: c.usize("d_kv")?,
            d_ff: c.usize("d_ff")?,
            n_heads: c.usize("num_heads")?,
            n_layers,
            n_decoder_layers: c.opt_usize("num_decoder_layers")?.unwrap_or(n_layers),
            num_buckets: c.opt_usize("relative_attention_num_buckets")?.unwrap_or(32),
            max_distance: c
                .opt_usize("relative_attention_max_distance")?
                .unwrap_or(128),
            eps: c.f64_or("layer_norm_epsilon", 1e-6)? as f32,
            act,
            gated,
            scale_decoder_outputs: c.bool_or("scale_decoder_outputs", tied),
            n_positions: match c.opt_usize("n_positions")? {
                Some(n) => Some(n),
                None => c.opt_usize("max_position_embeddings")?,
            },
        })
    }

    fn attention_spec(&self, causal: bool) -> AttentionSpec {
        AttentionSpec {
            hidden: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_heads,
            head_dim: self.d_kv,
            qkv_bias: false,
            o_bias: false,
            causal,
            window: None,
            rope: None,
            alibi: None,
            qk_norm: None,
        }
    }
}

#[derive(Clone)]
enum FeedForward {
    Relu(Mlp),
    Gated(GatedMlp),
}

impl FeedForward {
    fn load(w: &Weights, cfg: &T5Config) -> Result<FeedForward> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let wo = Linear::load(w, "wo", f, d, false)?;
        Ok(if cfg.gated {
            FeedForward::Gated(GatedMlp::from_parts(
                Linear::load(w, "wi_0", d, f, false)?,
                Linear::load(w, "wi_1", d, f, false)?,
                wo,
                cfg.act,
            ))
        } else {
            FeedForward::Relu(Mlp::from_parts(
                Linear::load(w, "wi", d, f, false)?,
                wo,
                cfg.act,
            ))
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            FeedForward::Relu(m) => m.forward(x)?,
            FeedForward::Gated(m) => m.forward(x)?,
        })
    }
}

fn self_attention(w: &Weights, cfg: &T5Config, causal: bool) -> Result<Attention> {
    let (d, inner) = (cfg.d_model, cfg.n_heads * cfg.d_kv);
    Ok(Attention::from_parts(
        Linear::load(w, "q", d, inner, false)?,
        Linear::load(w, "k", d, inner, false)?,
        Linear::load(w, "v", d, inner, false)?,
        Linear::load(w, "o", inner, d, false)?,
        cfg.attention_spec(causal),
    )
    .with_scale(1.0))
}

/// One block of either stack; `cross` is present in the decoder only.
#[derive(Clone)]
struct Block {
    self_norm: RmsNorm,
    self_attn: Attention,
    cross: Option<(RmsNorm, CrossAttention)>,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

impl Block {
    fn load(w: &Weights, cfg: &T5Config, decoder: bool) -> Result<Block> {
        let (d, inner) = (cfg.d_model, cfg.n_heads * cfg.d_kv);
        let l = w.pp("layer");
        let cross = if decoder {
            let c = l.pp(1).pp("EncDecAttention");
            Some((
                RmsNorm::load(&l.pp(1), "layer_norm", d, cfg.eps)?,
                CrossAttention::from_parts(
                    Linear::load(&c, "q", d, inner, false)?,
                    Linear::load(&c, "k", d, inner, false)?,
                    Linear::load(&c, "v", d, inner, false)?,
                    Linear::load(&c, "o", inner, d, false)?,
                    cfg.n_heads,
                    cfg.d_kv,
                    1.0,
                ),
            ))
        } else {
            None
        };
        let ff = l.pp(if decoder { 2 } else { 1 });
        Ok(Block {
            self_norm: RmsNorm::load(&l.pp(0), "layer_norm", d, cfg.eps)?,
            self_attn: self_attention(&l.pp(0).pp("SelfAttention"), cfg, decoder)?,
            cross,
            ff_norm: RmsNorm::load(&ff, "layer_norm", d, cfg.eps)?,
            ff: FeedForward::load(&ff.pp("DenseReluDense"), cfg)?,
        })
    }

    /// One block: the encoder's (`dec` = None: each sequence attends to its own rows) or the
    /// decoder's (self-attention through the KV store, then cross-attention to the memories).
    fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        layer: usize,
        bias: &PositionBias,
        dec: Option<Decoding<'_, '_>>,
    ) -> Result<Tensor> {
        let a = self.self_norm.forward(x)?;
        let mut h = match &dec {
            None => x.add(&self.self_attn.forward_encoder(&a, batch, Some(bias))?)?,
            Some(_) => x.clone(),
        };
        if let Some(Decoding {
            kv,
            cross: step,
            memory,
        }) = dec
        {
            h = h.add(
                &self
                    .self_attn
                    .forward_biased(&a, batch, layer, kv, Some(bias))?,
            )?;
            if let Some((norm, cross)) = &self.cross {
                let mem = EncoderMemory::layer(memory, layer);
                h = h.add(&cross.forward(&norm.forward(&h)?, step, &mem)?)?;
            }
        }
        Ok(h.add(&self.ff.forward(&self.ff_norm.forward(&h)?)?)?)
    }
}

/// The encoder or the decoder: blocks, the first block's position bias, the final norm.
#[derive(Clone)]
struct Stack {
    blocks: Vec<Block>,
    relative_attention_bias: RelativePositionBias,
    final_layer_norm: RmsNorm,
}

impl Stack {
    fn load(w: &Weights, cfg: &T5Config, decoder: bool, n_layers: usize) -> Result<Stack> {
        let blocks = (0..n_layers)
            .map(|i| Block::load(&w.pp("block").pp(i), cfg, decoder))
            .collect::<Result<Vec<_>>>()?;
        Ok(Stack {
            blocks,
            relative_attention_bias: RelativePositionBias::load(
                &w.pp("block.0.layer.0.SelfAttention"),
                "relative_attention_bias",
                cfg.n_heads,
                cfg.num_buckets,
                cfg.max_distance,
                !decoder,
            )?,
            final_layer_norm: RmsNorm::load(w, "final_layer_norm", cfg.d_model, cfg.eps)?,
        })
    }

    /// The encoder (`dec` = None) or the decoder over a packed step.
    fn forward(
        &self,
        x: Tensor,
        batch: &Batch,
        dec: Option<(&mut dyn KvStore, &[&EncoderMemory])>,
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        // Distances key − query in this step: back to position 0, forward to the end of the
        // longest span (keys of a sequence end with its last new token).
        let max_pos = batch.positions.iter().copied().max().unwrap_or(0) as isize;
        let max_len = batch.seqs.iter().map(|s| s.len).max().unwrap_or(1) as isize;
        let bias = self.relative_attention_bias.table(-max_pos, max_len - 1);
        let n = self.blocks.len();
        let x = match dec {
            None => crate::stack::layers(x, n, trace, |i, x| {
                self.blocks[i].forward(x, batch, i, &bias, None)
            })?,
            Some((kv, memory)) => {
                let cross = EncoderMemory::step(batch, memory, x.device())?;
                crate::stack::run(x, n, batch, kv, trace, |i, x, kv| {
                    let dec = Decoding {
                        kv,
                        cross: &cross,
                        memory,
                    };
                    self.blocks[i].forward(x, batch, i, &bias, Some(dec))
                })?
            }
        };
        self.final_layer_norm.forward(&x).map_err(Error::from)
    }
}

#[derive(Clone)]
pub struct T5 {
    shared: Embedding,
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
    pub cfg: T5Config,
    pub info: Seq2SeqInfo,
}

impl T5 {
    pub fn load(
        w: &Weights,
        c: &HfConfig,
        architecture: &str,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<T5> {
        let cfg = T5Config::from_hf(c)?;
        let shared = Embedding::load(w, "shared.weight", cfg.vocab, cfg.d_model)?;
        let total = cfg.n_layers + cfg.n_decoder_layers;
        let encoder = Stack::load(&w.pp("encoder"), &cfg, false, cfg.n_layers)?;
        on_layer(cfg.n_layers, total);
        let decoder = Stack::load(&w.pp("decoder"), &cfg, true, cfg.n_decoder_layers)?;
        on_layer(total, total);
        // Flan-T5 / v1.1 files carry their own head; tied checkpoints reuse `shared`.
        let lm_head = if w.contains("lm_head.weight") {
            Linear::load(w, "lm_head", cfg.d_model, cfg.vocab, false)?
        } else {
            Linear::tied(shared.table().clone())
        };
        let info = seq2seq_info(c, architecture, cfg.vocab, cfg.n_positions, None)?;
        Ok(T5 {
            shared,
            encoder,
            decoder,
            lm_head,
            cfg,
            info,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_decoder_layers, self.cfg.n_heads * self.cfg.d_kv)
    }

    pub fn encode(&self, src: &[u32], trace: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let x = self.shared.forward(src)?;
        self.encoder
            .forward(x, &Batch::single(0, src.len()), None, trace)
    }

    pub fn memory(&self, encoder_out: &Tensor) -> Result<EncoderMemory> {
        let cross = self.decoder.blocks.iter().map(|b| {
            let (_, cross) = b
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
        let x = self.shared.forward(tokens)?;
        self.decoder.forward(x, batch, Some((kv, memory)), trace)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = if self.cfg.scale_decoder_outputs {
            hidden.scale((self.cfg.d_model as f32).powf(-0.5))?
        } else {
            hidden.clone()
        };
        Ok(self.lm_head.forward(&h)?)
    }
}
