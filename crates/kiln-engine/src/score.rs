//! Teacher-forced scoring (what llama-perplexity does): the text's tokens are cut into
//! consecutive windows of `context` tokens, each scored on its own from an empty cache; every
//! token after a window's first gets `log p(token | window prefix)`.
//!
//! Each window is one prefill over the serving engine's paged KV storage (`PagedKvPool`, one
//! block table reused by every window), so `kiln score` runs the same attention path as served
//! requests. It stays a direct loop rather than a request through `EngineHandle`: a window needs
//! every row's logits, which generation requests never return, and windows share nothing a
//! scheduler could batch or cache.
//!
//! [`Engine::compare`] scores the same windows with a second (reference) model and measures how
//! far the model's next-token distributions are from the reference's, as llama.cpp's
//! `llama-perplexity --kl-divergence` does: KL(P_ref ‖ P_model) per scored position, top-1
//! agreement, Δp of the correct token. Both models run window by window and each position is
//! reduced as the logits arrive, so at most one window's logits per model are ever held;
//! llama.cpp's alternative (dump the base model's logits to a file first, then stream the
//! quantized model against it) suits a base model too big to keep loaded beside the other.

use kiln_nn::{Batch, PagedKv, PagedKvPool};

use crate::sampling::log_softmax_in_place;
use crate::serving::{memory, EngineConfig};
use crate::{Engine, Error, Result};

#[derive(Debug, Clone)]
pub struct Score {
    pub token_ids: Vec<u32>,
    /// One per scored token, in order.
    pub token_logprobs: Vec<f32>,
    pub perplexity: f64,
    pub n_windows: usize,
}

/// How a model's next-token distributions compare with a reference's over the same windows.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub n_windows: usize,
    /// Positions scored (each window's tokens after its first).
    pub n_scored: usize,
    /// Both perplexities exactly as [`Engine::score`] computes them.
    pub perplexity: f64,
    pub reference_perplexity: f64,
    /// KL(P_ref ‖ P_model) in nats, one value per scored position.
    pub kl: KlStats,
    /// Fraction (0..=1) of positions where both models' most likely token is the same.
    pub top1_agreement: f64,
    /// Mean over positions of p_model(correct token) − p_ref(correct token), with its standard
    /// error.
    pub delta_p_mean: f64,
    pub delta_p_stderr: f64,
}

/// Summary of the per-position KL divergences (nats).
#[derive(Debug, Clone, PartialEq)]
pub struct KlStats {
    pub mean: f64,
    /// Standard error of the mean (sample standard deviation / √n; 0 for one position).
    pub stderr: f64,
    pub median: f64,
    /// 99th percentile, interpolated linearly between ranks (numpy's default).
    pub p99: f64,
    pub max: f64,
}

/// One model's reusable window runner: a KV pool of `context` tokens and its block table.
struct Windows<'a> {
    engine: &'a Engine,
    pool: PagedKvPool,
    table: Vec<u32>,
}

impl<'a> Windows<'a> {
    fn new(engine: &'a Engine, context: usize) -> Result<Windows<'a>> {
        let block_size = kiln_kv::DEFAULT_BLOCK_SIZE;
        let cfg = EngineConfig {
            block_size,
            ..EngineConfig::default()
        };
        let n_blocks = context.div_ceil(block_size);
        let pool = memory::pool(engine, &cfg, n_blocks)?;
        let table: Vec<u32> = (0..n_blocks as u32).collect();
        Ok(Windows {
            engine,
            pool,
            table,
        })
    }

    /// Logits `(input.len(), vocab)`, row-major, of every position of `input` from an empty cache.
    fn logits(&mut self, input: &[u32]) -> Result<Vec<f32>> {
        let batch = Batch::single(0, input.len());
        let mut kv = PagedKv::new(&mut self.pool, vec![&self.table], vec![0], &batch)
            .map_err(kiln_models::Error::from)?;
        let rows: Vec<u32> = (0..input.len() as u32).collect();
        Ok(self
            .engine
            .forward_rows(input, &batch, &mut kv, &rows)?
            .into_f32_vec())
    }
}

impl Engine {
    pub fn score(
        &self,
        ids: &[u32],
        context: usize,
        on_window: &mut dyn FnMut(usize, usize),
    ) -> Result<Score> {
        self.check_scoring(ids, context)?;
        let vocab = self.info.vocab_size;
        let windows = windows(ids, context);
        let mut logprobs = Vec::with_capacity(ids.len());
        let mut runner = Windows::new(self, context)?;
        for (i, w) in windows.iter().enumerate() {
            let mut logits = runner.logits(&w[..w.len() - 1])?;
            for (row, &target) in logits.chunks_mut(vocab).zip(&w[1..]) {
                logprobs.push(target_logprob(row, target));
            }
            on_window(i + 1, windows.len());
        }
        Ok(Score {
            token_ids: ids.to_vec(),
            perplexity: perplexity(&logprobs),
            token_logprobs: logprobs,
            n_windows: windows.len(),
        })
    }

    /// Scores `ids` with this model and with `reference` over the same windows and compares
    /// their distributions position by position (see the module doc). The caller makes sure
    /// both tokenizers give these ids for the text; the vocabularies must have the same size.
    pub fn compare(
        &self,
        reference: &Engine,
        ids: &[u32],
        context: usize,
        on_window: &mut dyn FnMut(usize, usize),
    ) -> Result<Comparison> {
        self.check_scoring(ids, context)?;
        reference.check_scoring(ids, context)?;
        let vocab = self.info.vocab_size;
        if reference.info.vocab_size != vocab {
            return Err(Error::InvalidArgument(format!(
                "the model's vocabulary has {vocab} tokens but the reference's has {}: \
                 comparing distributions needs the same vocabulary",
                reference.info.vocab_size
            )));
        }
        let windows = windows(ids, context);
        let mut model_run = Windows::new(self, context)?;
        let mut reference_run = Windows::new(reference, context)?;
        let mut acc = Accumulator::with_capacity(ids.len());
        for (i, w) in windows.iter().enumerate() {
            let input = &w[..w.len() - 1];
            let mut model = model_run.logits(input)?;
            let mut base = reference_run.logits(input)?;
            for ((m, r), &target) in model
                .chunks_mut(vocab)
                .zip(base.chunks_mut(vocab))
                .zip(&w[1..])
            {
                acc.push(m, r, target);
            }
            on_window(i + 1, windows.len());
        }
        Ok(acc.finish(windows.len()))
    }

    fn check_scoring(&self, ids: &[u32], context: usize) -> Result<()> {
        if ids.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "scoring needs at least 2 tokens, the text has {}",
                ids.len()
            )));
        }
        if context < 2 {
            return Err(Error::InvalidArgument(format!(
                "--context must be at least 2, got {context}"
            )));
        }
        if context > self.info.max_context {
            return Err(Error::PromptTooLong {
                n_tokens: context,
                max_context: self.info.max_context,
            });
        }
        Ok(())
    }
}

/// Consecutive windows of `context` tokens; a last window of one token has nothing to score.
fn windows(ids: &[u32], context: usize) -> Vec<&[u32]> {
    ids.chunks(context).filter(|w| w.len() >= 2).collect()
}

/// `log p(target)` from a row of logits, which it turns into log-probabilities in place.
fn target_logprob(row: &mut [f32], target: u32) -> f32 {
    log_softmax_in_place(row);
    row[target as usize]
}

fn perplexity(logprobs: &[f32]) -> f64 {
    let mean = logprobs.iter().map(|&x| x as f64).sum::<f64>() / logprobs.len() as f64;
    (-mean).exp()
}

/// Per-position results of [`Engine::compare`]: one f64 or f32 per position, never logits.
struct Accumulator {
    logprobs: Vec<f32>,
    reference_logprobs: Vec<f32>,
    kl: Vec<f64>,
    delta_p: Vec<f64>,
    same_top1: usize,
}

impl Accumulator {
    fn with_capacity(n: usize) -> Accumulator {
        Accumulator {
            logprobs: Vec::with_capacity(n),
            reference_logprobs: Vec::with_capacity(n),
            kl: Vec::with_capacity(n),
            delta_p: Vec::with_capacity(n),
            same_top1: 0,
        }
    }

    /// One position: `model` and `reference` are its two rows of logits (overwritten).
    fn push(&mut self, model: &mut [f32], reference: &mut [f32], target: u32) {
        let (m_shift, r_shift) = (log_sum_exp(model), log_sum_exp(reference));
        let mut kl = 0.0f64;
        for (&m, &r) in model.iter().zip(reference.iter()) {
            let (lm, lr) = (m as f64 - m_shift, r as f64 - r_shift);
            kl += lr.exp() * (lr - lm);
        }
        self.kl.push(kl);
        let t = target as usize;
        let p_model = (model[t] as f64 - m_shift).exp();
        let p_reference = (reference[t] as f64 - r_shift).exp();
        self.delta_p.push(p_model - p_reference);
        if argmax(model) == argmax(reference) {
            self.same_top1 += 1;
        }
        // Last: these turn the rows into f32 log-probabilities, exactly as `score` does.
        self.logprobs.push(target_logprob(model, target));
        self.reference_logprobs
            .push(target_logprob(reference, target));
    }

    fn finish(self, n_windows: usize) -> Comparison {
        let n = self.kl.len();
        let (delta_p_mean, delta_p_stderr) = mean_and_stderr(&self.delta_p);
        Comparison {
            n_windows,
            n_scored: n,
            perplexity: perplexity(&self.logprobs),
            reference_perplexity: perplexity(&self.reference_logprobs),
            kl: KlStats::of(self.kl),
            top1_agreement: self.same_top1 as f64 / n as f64,
            delta_p_mean,
            delta_p_stderr,
        }
    }
}

impl KlStats {
    fn of(mut values: Vec<f64>) -> KlStats {
        let (mean, stderr) = mean_and_stderr(&values);
        values.sort_unstable_by(f64::total_cmp);
        KlStats {
            mean,
            stderr,
            median: percentile(&values, 0.5),
            p99: percentile(&values, 0.99),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// `max + ln Σ exp(x − max)` in f64: the shift that turns a row of logits into log-softmax.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln()
}

/// Index of the largest logit, the lowest index on ties (greedy sampling's choice).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|&x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The `q` quantile of sorted values, linear between the two nearest ranks.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert!((percentile(&v, 0.99) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn kl_of_a_row_with_itself_is_zero_and_positive_otherwise() {
        let row = [0.5f32, -1.0, 2.0, 0.0];
        let mut acc = Accumulator::with_capacity(2);
        acc.push(&mut row.clone(), &mut row.clone(), 2);
        acc.push(&mut [2.0f32, -1.0, 0.5, 0.0], &mut row.clone(), 2);
        assert_eq!(acc.kl[0], 0.0);
        assert!(acc.kl[1] > 0.0);
        // Closed form for the second position.
        let (p, q) = (
            softmax(&row.map(f64::from)),
            softmax(&[2.0, -1.0, 0.5, 0.0]),
        );
        let want: f64 = p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((acc.kl[1] - want).abs() < 1e-12);
        let c = acc.finish(1);
        assert_eq!(c.top1_agreement, 0.5);
        assert!((c.delta_p_mean - (q[2] - p[2]) / 2.0).abs() < 1e-12);
    }

    fn softmax(x: &[f64]) -> Vec<f64> {
        let s: f64 = x.iter().map(|v| v.exp()).sum();
        x.iter().map(|v| v.exp() / s).collect()
    }
}
