//! Teacher-forced scoring (what llama-perplexity does): the text's tokens are cut into
//! consecutive windows of `context` tokens, each scored on its own from an empty cache; every
//! token after a window's first gets `log p(token | window prefix)`.
//!
//! Each window is one prefill over the serving engine's paged KV storage (`PagedKvPool`, one
//! block table reused by every window), so `kiln score` runs the same attention path as served
//! requests. It stays a direct loop rather than a request through `EngineHandle`: a window needs
//! every row's logits, which generation requests never return, and windows share nothing a
//! scheduler could batch or cache.

use kiln_nn::{Batch, PagedKv};

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

impl Engine {
    pub fn score(
        &self,
        ids: &[u32],
        context: usize,
        on_window: &mut dyn FnMut(usize, usize),
    ) -> Result<Score> {
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
        let vocab = self.info.vocab_size;
        let windows: Vec<&[u32]> = ids.chunks(context).filter(|w| w.len() >= 2).collect();
        let mut logprobs = Vec::with_capacity(ids.len());
        let block_size = kiln_kv::DEFAULT_BLOCK_SIZE;
        let cfg = EngineConfig {
            block_size,
            ..EngineConfig::default()
        };
        let n_blocks = context.div_ceil(block_size);
        let mut pool = memory::pool(self, &cfg, n_blocks)?;
        let table: Vec<u32> = (0..n_blocks as u32).collect();
        for (i, w) in windows.iter().enumerate() {
            let input = &w[..w.len() - 1];
            let batch = Batch::single(0, input.len());
            let mut kv = PagedKv::new(&mut pool, vec![&table], vec![0], &batch)
                .map_err(kiln_models::Error::from)?;
            let rows: Vec<u32> = (0..input.len() as u32).collect();
            let mut logits = self
                .forward_rows(input, &batch, &mut kv, &rows)?
                .into_f32_vec();
            for (row, &target) in logits.chunks_mut(vocab).zip(&w[1..]) {
                log_softmax_in_place(row);
                logprobs.push(row[target as usize]);
            }
            on_window(i + 1, windows.len());
        }
        let mean = logprobs.iter().map(|&x| x as f64).sum::<f64>() / logprobs.len() as f64;
        Ok(Score {
            token_ids: ids.to_vec(),
            token_logprobs: logprobs,
            perplexity: (-mean).exp(),
            n_windows: windows.len(),
        })
    }
}
