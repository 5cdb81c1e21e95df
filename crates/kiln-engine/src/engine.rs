//! The generation loop for one request: encode, one batched prefill pass, then decode steps that
//! sample, stream text through the incremental detokenizer and stop on EOS, a stop string,
//! `max_tokens` or the context length.

use std::path::Path;
use std::time::Instant;

use kiln_models::{Model, ModelInfo};
use kiln_nn::{Batch, KvCache, KvStore, Placement};
use kiln_tensor::Tensor;
use kiln_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

use crate::sequence::SeqState;
use crate::{Error, FinishReason, Result, SamplingParams};

/// Wall-clock split of a generation.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub prompt_ms: f64,
    pub decode_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    /// Generated ids only (the prompt is not included).
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

pub struct Engine {
    pub model: Model,
    pub info: ModelInfo,
    pub tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    eos: Vec<u32>,
}

impl Engine {
    /// Loads a GGUF file or a Hugging Face directory with its tokenizer and chat template.
    pub fn load(path: &Path, on_progress: &mut dyn FnMut(usize, usize)) -> Result<Engine> {
        Engine::load_on(path, Placement::default(), on_progress)
    }

    /// [`Engine::load`] with the weights on a device in a compute dtype.
    pub fn load_on(
        path: &Path,
        placement: Placement,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Engine> {
        let loaded = kiln_models::load_on(path, placement, on_progress)?;
        let tokenizer = load_tokenizer(path)?;
        let mut eos: Vec<u32> = Vec::new();
        if path.is_dir() {
            if let Ok(text) = std::fs::read_to_string(path.join("generation_config.json")) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    eos.extend(kiln_models_ids(v.get("eos_token_id")));
                }
            }
        }
        Ok(Engine::from_parts(loaded, tokenizer, eos))
    }

    /// An engine from a loaded model and a tokenizer; `eos` adds end-of-sequence ids to those
    /// of the tokenizer and the model's config (tests pair tiny fixture models with a fixture
    /// tokenizer this way).
    pub fn from_parts(loaded: kiln_models::Loaded, tokenizer: Tokenizer, eos: Vec<u32>) -> Engine {
        let mut eos = eos;
        eos.extend(tokenizer.eos_ids());
        eos.extend(&loaded.info.eos_token_ids);
        eos.sort_unstable();
        eos.dedup();
        let chat = ChatTemplate::from_tokenizer(&tokenizer).ok();
        Engine {
            model: loaded.model,
            info: loaded.info,
            tokenizer,
            chat,
            eos,
        }
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The prompt text after the chat template (a single user turn).
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let t = self.chat.as_ref().ok_or(Error::NoChatTemplate)?;
        Ok(t.render(&[ChatMessage::new("user", user)], true)?)
    }

    /// Tokens of a prompt; with a chat template applied the template already holds any BOS.
    pub fn encode_prompt(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if let Some(s2s) = self.model.as_seq2seq() {
            // A source text: the encoder's own limits apply (kiln-models checks them).
            if chat {
                return Err(Error::Seq2SeqChat(self.info.architecture.clone()));
            }
            // An empty text still tokenizes to T5's `</s>`; it is no source all the same.
            if text.trim().is_empty() {
                return Err(kiln_models::Error::EmptySource.into());
            }
            let ids = self.tokenizer.encode(text, true)?;
            s2s.check_source(&ids)?;
            return Ok(ids);
        }
        let ids = if chat {
            self.tokenizer.encode(&self.chat_prompt(text)?, false)?
        } else {
            self.tokenizer.encode(text, true)?
        };
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if ids.len() >= self.info.max_context {
            return Err(Error::PromptTooLong {
                n_tokens: ids.len(),
                max_context: self.info.max_context,
            });
        }
        Ok(ids)
    }

    /// Runs `ids` through the model after what `cache` holds; logits of the last `n_logits` rows.
    ///
    /// The forward pass runs as one job inside the thread pool, so the many small parallel
    /// sections of a decode step are shared by work-stealing between pool threads instead of each
    /// being handed from this thread to the pool and back (a wake-up per op).
    pub fn step(&self, cache: &mut KvCache, ids: &[u32], n_logits: usize) -> Result<Tensor> {
        let mut result = None;
        rayon::scope(|_| result = Some(self.step_in_pool(cache, ids, n_logits)));
        result.unwrap_or_else(|| Err(Error::InvalidArgument("forward pass did not run".into())))
    }

    fn step_in_pool(&self, cache: &mut KvCache, ids: &[u32], n_logits: usize) -> Result<Tensor> {
        let batch = Batch::single(cache.len(), ids.len());
        let rows = n_logits.min(ids.len());
        let rows: Vec<u32> = (ids.len() - rows..ids.len()).map(|r| r as u32).collect();
        self.logits_of_rows(ids, &batch, cache, &rows)
    }

    /// One forward pass over a packed step (`ids` laid out by `batch`, keys/values through
    /// `kv`); logits `(rows.len(), vocab)` of the given rows only, since the LM head over every
    /// prefill row would cost as much as a layer. Runs inside the thread pool like [`step`].
    ///
    /// [`step`]: Engine::step
    pub fn forward_rows(
        &self,
        ids: &[u32],
        batch: &Batch,
        kv: &mut (dyn KvStore + Send),
        rows: &[u32],
    ) -> Result<Tensor> {
        let mut result = None;
        rayon::scope(|_| result = Some(self.logits_of_rows(ids, batch, kv, rows)));
        result.unwrap_or_else(|| Err(Error::InvalidArgument("forward pass did not run".into())))
    }

    fn logits_of_rows(
        &self,
        ids: &[u32],
        batch: &Batch,
        kv: &mut dyn KvStore,
        rows: &[u32],
    ) -> Result<Tensor> {
        let hidden = self.model.forward(ids, batch, kv)?;
        if rows.is_empty() {
            return Ok(Tensor::zeros([0, self.info.vocab_size]));
        }
        let hidden = if rows.len() == ids.len() {
            hidden
        } else {
            hidden.gather_rows(rows).map_err(kiln_models::Error::from)?
        };
        // Sampling runs on the host: the logits come back as f32 (a no-op on the CPU).
        let logits = self.model.logits(&hidden)?;
        Ok(logits
            .to_device(kiln_tensor::Device::Cpu)
            .and_then(|l| l.to_dtype(kiln_tensor::DType::F32))
            .map_err(kiln_models::Error::from)?)
    }

    /// Generates from prompt ids, calling `on_text` with each newly completed piece of text.
    ///
    /// The single-request loop over a contiguous [`KvCache`]: the reference the serving engine
    /// is tested against (same [`SeqState`], so the same finish rules and text). `kiln generate`
    /// and the server run requests through [`crate::EngineHandle`] instead.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        if self.model.as_seq2seq().is_some() {
            return self.generate_seq2seq(prompt, params, on_text);
        }
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let max_context = self.info.max_context;
        if prompt.len() >= max_context {
            return Err(Error::PromptTooLong {
                n_tokens: prompt.len(),
                max_context,
            });
        }
        let mut seq = SeqState::new(
            &self.tokenizer,
            &self.eos,
            prompt.to_vec(),
            params,
            None,
            self.info.vocab_size,
            max_context,
        )?;
        let mut cache = self.model.new_cache();
        let mut text = String::new();

        let t0 = Instant::now();
        let mut logits = self.step(&mut cache, prompt, 1)?.into_f32_vec();
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let finish = loop {
            let s = seq.accept_logits(&mut logits)?;
            if !s.text.is_empty() {
                text.push_str(&s.text);
                on_text(&s.text);
            }
            if let Some(reason) = s.finish {
                break reason;
            }
            // `id` is `None` only for an end-of-sequence id, which always sets `finish`.
            let Some(next) = s.id else {
                break FinishReason::Stop;
            };
            logits = self.step(&mut cache, &[next], 1)?.into_f32_vec();
        };
        let decode_s = t1.elapsed().as_secs_f64();
        // The first sampled token comes from the prefill; decode steps = generated - 1.
        let generated = seq.generated().to_vec();
        let decode_steps = generated.len().saturating_sub(1);
        Ok(Generation {
            text,
            token_ids: generated,
            prompt_tokens: prompt.len(),
            finish_reason: finish,
            timings: Timings {
                prompt_ms: prompt_s * 1e3,
                decode_ms: decode_s * 1e3,
                prompt_tokens_per_s: prompt.len() as f64 / prompt_s.max(1e-9),
                decode_tokens_per_s: decode_steps as f64 / decode_s.max(1e-9),
            },
        })
    }
}

fn kiln_models_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The tokenizer of a model path: `tokenizer.json` of a Hugging Face directory, or rebuilt
/// from a GGUF file's metadata.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Ok(if path.is_dir() {
        let tj = path.join("tokenizer.json");
        if !tj.exists() {
            return Err(Error::NoTokenizer(path.display().to_string()));
        }
        Tokenizer::from_file(&tj)?
    } else {
        Tokenizer::from_gguf(&kiln_gguf::GgufFile::open(path)?)?
    })
}
