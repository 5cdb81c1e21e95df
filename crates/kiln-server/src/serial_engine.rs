//! Interim request executor: one request at a time on a dedicated thread, over the existing
//! single-sequence [`kiln_engine::Engine`].
//!
//! It has the shape of the batching engine's request-level API (`EngineHandle::start / submit /
//! stats / shutdown`, `GenerateRequest`, a `RequestStream` of [`Event`]s that cancels its request
//! when dropped), so the HTTP layer is written once against that API and switches to the
//! continuous-batching engine by changing the `use` in `lib.rs`. Deviations from the batching
//! engine, all of them visible only as speed: requests run one after another (FIFO, `priority`
//! ignored), and there is no paged KV pool — `stats()` reports the one contiguous cache in
//! `block_size` units so that `/metrics` keeps its meaning.
//!
//! Invariants: a request is counted as waiting from `submit` until the worker takes it; a
//! dropped stream is noticed before every forward pass, so a cancelled request costs at most one
//! more step; after `shutdown` no request is admitted and the ones already admitted complete.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kiln_engine::{
    log_softmax, top_logprobs, Engine, FinishReason, Sampler, SamplingParams, StopChecker, Timings,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// KV positions per reported block (vLLM's default block size).
const BLOCK_SIZE: usize = 16;

/// Limits of the executor (the subset of the batching engine's `EngineConfig` it honours).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests allowed to wait behind the running one; past it `submit` answers `QueueFull`.
    pub max_waiting: usize,
}

/// One request: prompt ids, how to sample, and how many top log-probabilities to report per
/// generated token (`None`: none; `Some(0)`: only the sampled token's).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub priority: i32,
    pub logprobs: Option<usize>,
}

/// The sampled token's log-probability under the model's distribution (before penalties and
/// temperature, as vLLM reports by default) and the `n` most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a request produces, in order: tokens, then exactly one `Finished` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the text it completed (possibly empty: text held back by the
    /// incremental detokenizer or by a stop string that may still match).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    Failed(String),
}

/// Why a request was not admitted; each is the client's problem or a transient state.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("the waiting queue is full")]
    QueueFull,
    #[error("the prompt has {n_tokens} tokens but the model's context is {max_context} tokens")]
    PromptTooLong { n_tokens: usize, max_context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{0}")]
    InvalidParams(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A snapshot for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_free: usize,
    /// Fraction of allocated KV slots that hold no token (tail of the last block).
    pub kv_waste: f64,
    pub prefix_cache_hit_rate: f64,
}

/// The receiving end of one request; dropping it cancels the request.
pub type RequestStream = UnboundedReceiver<Event>;

struct Job {
    req: GenerateRequest,
    tx: UnboundedSender<Event>,
}

struct Shared {
    waiting: AtomicUsize,
    running: AtomicUsize,
    /// Tokens in the running request's cache.
    cache_tokens: AtomicUsize,
    stopping: AtomicBool,
}

/// Cheap to clone; every clone submits to the same worker.
#[derive(Clone)]
pub struct EngineHandle {
    engine: Arc<Engine>,
    config: EngineConfig,
    shared: Arc<Shared>,
    tx: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    pub fn start(engine: Arc<Engine>, config: EngineConfig) -> std::io::Result<EngineHandle> {
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            cache_tokens: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = {
            let (engine, shared) = (engine.clone(), shared.clone());
            std::thread::Builder::new()
                .name("kiln-engine".into())
                .spawn(move || {
                    for job in rx {
                        shared.waiting.fetch_sub(1, Ordering::SeqCst);
                        if job.tx.is_closed() {
                            continue;
                        }
                        shared.running.fetch_add(1, Ordering::SeqCst);
                        run(&engine, &shared, job);
                        shared.cache_tokens.store(0, Ordering::SeqCst);
                        shared.running.fetch_sub(1, Ordering::SeqCst);
                    }
                })?
        };
        Ok(EngineHandle {
            engine,
            config,
            shared,
            tx: Arc::new(Mutex::new(Some(tx))),
            worker: Arc::new(Mutex::new(Some(worker))),
        })
    }

    /// Validates and queues a request.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestStream, SubmitError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let max_context = self.engine.info.max_context;
        if req.prompt.len() >= max_context {
            return Err(SubmitError::PromptTooLong {
                n_tokens: req.prompt.len(),
                max_context,
            });
        }
        req.params
            .validate()
            .map_err(|e| SubmitError::InvalidParams(e.to_string()))?;
        let vocab = self.engine.info.vocab_size;
        if let Some(bad) = req.prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(SubmitError::InvalidParams(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        // Reserve a waiting slot first so that concurrent submits cannot overshoot the limit.
        let prev = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if prev >= self.config.max_waiting {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        let (tx, rx) = unbounded_channel();
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref().map(|s| s.send(Job { req, tx })) {
            Some(Ok(())) => Ok(rx),
            _ => {
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(SubmitError::ShuttingDown)
            }
        }
    }

    pub fn stats(&self) -> EngineStats {
        let blocks_total = self.engine.info.max_context.div_ceil(BLOCK_SIZE);
        let tokens = self.shared.cache_tokens.load(Ordering::SeqCst);
        let used = tokens.div_ceil(BLOCK_SIZE);
        let kv_waste = if used == 0 {
            0.0
        } else {
            1.0 - tokens as f64 / (used * BLOCK_SIZE) as f64
        };
        EngineStats {
            running: self.shared.running.load(Ordering::SeqCst),
            waiting: self.shared.waiting.load(Ordering::SeqCst),
            kv_blocks_used: used,
            kv_blocks_free: blocks_total.saturating_sub(used),
            kv_waste,
            prefix_cache_hit_rate: 0.0,
        }
    }

    /// Stops admitting, lets every admitted request finish, and returns when the worker exits.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

fn run(engine: &Engine, shared: &Shared, job: Job) {
    let Job { req, tx } = job;
    if let Err(e) = generate(engine, shared, &req, &tx) {
        let _ = tx.send(Event::Failed(e.to_string()));
    }
}

/// The step loop of `Engine::generate`, emitting an event per token and stopping as soon as the
/// receiver is gone.
fn generate(
    engine: &Engine,
    shared: &Shared,
    req: &GenerateRequest,
    tx: &UnboundedSender<Event>,
) -> kiln_engine::Result<()> {
    let (prompt, params) = (&req.prompt, &req.params);
    let max_context = engine.info.max_context;
    let mut sampler = Sampler::new(params, engine.info.vocab_size)?;
    let mut stop = StopChecker::new(&params.stop);
    let mut stream = engine.tokenizer.decode_stream(true);
    let mut cache = engine.model.new_cache();
    let mut generated: Vec<u32> = Vec::new();
    let t0 = Instant::now();
    let mut logits = engine.step(&mut cache, prompt, 1)?.into_f32_vec();
    shared.cache_tokens.store(cache.len(), Ordering::SeqCst);
    let prompt_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let finish = loop {
        if tx.is_closed() {
            return Ok(());
        }
        let logprob_of = req.logprobs.map(|n| (log_softmax(&logits), n));
        let next = sampler.sample(&mut logits, prompt, &generated);
        if !params.ignore_eos && engine.eos_ids().contains(&next) {
            // Text still held back (an incomplete character, a partial stop-string match)
            // belongs to the output; it rides on a text-only event that carries no logprob.
            let tail = flush(&mut stream, &mut stop)?;
            if !tail.is_empty() {
                let _ = tx.send(Event::Token {
                    id: next,
                    text: tail,
                    logprob: None,
                });
            }
            break FinishReason::Stop;
        }
        generated.push(next);
        let logprob = logprob_of.map(|(lp, n)| TokenLogprob {
            logprob: lp[next as usize],
            top: top_logprobs(&lp, n),
        });
        let mut text = String::new();
        let mut finish = None;
        if let Some(piece) = stream.push(next)? {
            let upd = stop.push(&piece);
            text = upd.text;
            if upd.stop.is_some() {
                finish = Some(FinishReason::Stop);
            }
        }
        if finish.is_none()
            && (generated.len() >= params.max_tokens || cache.len() + 1 >= max_context)
        {
            text.push_str(&flush(&mut stream, &mut stop)?);
            finish = Some(FinishReason::Length);
        }
        let _ = tx.send(Event::Token {
            id: next,
            text,
            logprob,
        });
        if let Some(f) = finish {
            break f;
        }
        logits = engine.step(&mut cache, &[next], 1)?.into_f32_vec();
        shared.cache_tokens.store(cache.len(), Ordering::SeqCst);
    };
    let decode_s = t1.elapsed().as_secs_f64();
    let decode_steps = generated.len().saturating_sub(1);
    let _ = tx.send(Event::Finished {
        reason: finish,
        usage: Usage {
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
        },
        timings: Timings {
            prompt_ms: prompt_s * 1e3,
            decode_ms: decode_s * 1e3,
            prompt_tokens_per_s: prompt.len() as f64 / prompt_s.max(1e-9),
            decode_tokens_per_s: decode_steps as f64 / decode_s.max(1e-9),
        },
    });
    Ok(())
}

/// The text the detokenizer and the stop checker still hold at the end of a sequence.
fn flush(
    stream: &mut kiln_tokenizer::DecodeStream<'_>,
    stop: &mut StopChecker,
) -> kiln_engine::Result<String> {
    let mut tail = String::new();
    if let Some(piece) = stream.flush()? {
        tail.push_str(&stop.push(&piece).text);
    }
    if stop.stopped().is_none() {
        tail.push_str(&stop.finish());
    }
    Ok(tail)
}
