//! [`BeamModel`] for decoder-only models: a beam's state is its own contiguous [`KvCache`], and
//! one step runs every live beam's token through a single packed forward pass ([`SeqCaches`]),
//! so `num_beams` beams cost one pass per token rather than `num_beams`.

use kiln_models::Model;
use kiln_nn::{Batch, KvCache, SeqCaches, SeqSpan};

use super::BeamModel;
use crate::{Error, Result};

/// A causal language model driven by beam search.
pub struct CausalBeam<'a> {
    pub model: &'a Model,
}

impl<'a> CausalBeam<'a> {
    pub fn new(model: &'a Model) -> Self {
        CausalBeam { model }
    }

    /// Prefills `prompt` into a fresh cache: the initial beam state and its next-token logits.
    pub fn prefill(&self, prompt: &[u32]) -> Result<(KvCache, Vec<f32>)> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let mut cache = self.model.new_cache();
        let batch = Batch::single(0, prompt.len());
        let logits = in_pool(|| {
            let hidden = self.model.forward(prompt, &batch, &mut cache)?;
            let last = hidden
                .narrow(0, prompt.len() - 1, 1)
                .map_err(kiln_models::Error::from)?;
            Ok(self.model.logits(&last)?.into_f32_vec())
        })?;
        Ok((cache, logits))
    }
}

impl BeamModel for CausalBeam<'_> {
    type State = KvCache;

    fn step(&self, states: &mut [KvCache], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        crate::beam::check_step(states.len(), tokens.len())?;
        // One new token per beam, each after its own cached positions.
        let batch = Batch::new(
            states.iter().map(|c| c.len()).collect(),
            (0..states.len())
                .map(|i| SeqSpan { start: i, len: 1 })
                .collect(),
        );
        let mut store = SeqCaches(states.iter_mut().collect());
        let flat = in_pool(|| {
            let hidden = self.model.forward(tokens, &batch, &mut store)?;
            Ok(self.model.logits(&hidden)?.into_f32_vec())
        })?;
        let vocab = flat.len() / tokens.len().max(1);
        Ok(flat.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// Runs a forward pass as one job inside the thread pool (see `Engine::step` for why).
fn in_pool<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let mut result = None;
    rayon::scope(|_| result = Some(f()));
    result.unwrap_or_else(|| Err(Error::InvalidArgument("forward pass did not run".into())))
}
