//! Calibration: a model's own forward pass over calibration text, quantizing its linear layers
//! one block at a time with the inputs that the blocks already quantized produce (GPTQ's and
//! AWQ's procedure), in memory bounded by one block's inputs.
//!
//! [`run`] installs a session on the calling thread for the duration of a forward pass. The
//! layer-stack loop every model shares calls [`quantize_block`] before it runs block `i` for
//! real: the block runs with recording on — every named [`Linear`](crate::Linear) not yet
//! quantized copies its input to the host, one [`InputGroup`] per call (q/k/v share one call,
//! gate/up another) — and the [`Quantizer`] gets the first group (`sequential`, AutoGPTQ's
//! `true_sequential`) or all of them; the weights it returns replace the layer's own for the
//! rest of the pass, and the block runs again until no named linear of it is left; that last
//! run's output, the quantized block's, is the next block's input.
//!
//! The replacement weights are dense — the function the quantized layer computes (for AWQ that
//! includes the inverse input scaling that an export folds into the preceding layer) — so the
//! model code is unchanged. Linears outside the stack (the LM head) and those named by
//! [`Quantizer::skip`] (MoE routers) are never touched; an expert that no calibration token
//! reaches is never recorded, and the caller quantizes it without data.
//!
//! Calibration runs on the host in f32 with [`FreshKv`], a KV store that keeps nothing between
//! calls: a block may run several times on the same step.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_tensor::host_kv::{attention, AttnParams};
use kiln_tensor::Tensor;

use crate::kv_store::per_sequence;
use crate::{Batch, Error, KvStore, Result};

/// The recorded input of one call: `x` `(n_rows, cols)` on the host, and the linears that
/// read it, each with its weight as loaded.
pub struct InputGroup {
    pub block: usize,
    pub x: Vec<f32>,
    pub n_rows: usize,
    pub cols: usize,
    pub linears: Vec<(Arc<str>, Tensor)>,
}

/// What quantizes a block's linears during calibration (GPTQ, AWQ; kiln-cli's `quantize`).
pub trait Quantizer {
    /// Hand over one input group at a time (true sequential) rather than a whole block's.
    fn sequential(&self) -> bool;
    /// Linears to leave as they are, by name.
    fn skip(&self, name: &str) -> bool;
    /// The replacement weight of every linear of `groups`, in order: same shape, dense f32.
    /// `trial` runs the block with some of its linears replaced by the given weights and
    /// returns the mean squared difference of its output from the output with the weights as
    /// they are (the recording run's): a search may score candidates on the whole block.
    fn quantize(&mut self, groups: &[InputGroup], trial: &mut Trial<'_>) -> Result<Vec<Tensor>>;
}

/// See [`Quantizer::quantize`].
pub type Trial<'a> = dyn FnMut(&[(Arc<str>, Tensor)]) -> Result<f64> + 'a;

struct Session {
    quantizer: Option<Box<dyn Quantizer>>,
    block: usize,
    recording: bool,
    groups: Vec<InputGroup>,
    replaced: HashMap<Arc<str>, Tensor>,
    skipped: HashSet<Arc<str>>,
}

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// Runs `f` (a forward pass over the calibration batch, with [`FreshKv`]) with `quantizer`
/// called for every block; returns `f`'s result, the quantizer, and the replaced weights.
pub fn run<R>(
    quantizer: Box<dyn Quantizer>,
    f: impl FnOnce() -> R,
) -> (R, Box<dyn Quantizer>, HashMap<Arc<str>, Tensor>) {
    SESSION.with(|s| {
        *s.borrow_mut() = Some(Session {
            quantizer: Some(quantizer),
            block: 0,
            recording: false,
            groups: Vec::new(),
            replaced: HashMap::new(),
            skipped: HashSet::new(),
        })
    });
    let r = f();
    let s = SESSION
        .with(|s| s.borrow_mut().take())
        .expect("the session installed above");
    let q = s.quantizer.expect("the quantizer is back after each block");
    (r, q, s.replaced)
}

/// Whether a calibration session is running on this thread.
pub fn active() -> bool {
    SESSION.with(|s| s.borrow().is_some())
}

/// Quantizes block `block` (see the module doc); `run_block` runs it on the step's input.
/// Returns the output of its last run, in which every linear was already quantized (or
/// skipped): the block's output for the next one.
pub fn quantize_block<E: From<Error> + std::fmt::Display>(
    block: usize,
    mut run_block: impl FnMut() -> std::result::Result<Tensor, E>,
) -> std::result::Result<Tensor, E> {
    loop {
        with(|s| {
            s.block = block;
            s.recording = true;
            s.groups.clear();
        });
        let ran = run_block();
        let (groups, quantizer) = with(|s| {
            s.recording = false;
            (std::mem::take(&mut s.groups), s.quantizer.take())
        });
        let output = ran?;
        let Some(mut quantizer) = quantizer else {
            return Err(Error::Config("calibration: a block ran inside a block".into()).into());
        };
        if groups.is_empty() {
            with(|s| s.quantizer = Some(quantizer));
            return Ok(output);
        }
        let take = if quantizer.sequential() {
            1
        } else {
            groups.len()
        };
        // The recording run's output, copied to the host on the first trial only (GPTQ and RTN
        // never ask for one).
        let mut reference: Option<Vec<f32>> = None;
        let mut trial = |weights: &[(Arc<str>, Tensor)]| -> Result<f64> {
            if reference.is_none() {
                reference = Some(output.try_to_vec_f32()?);
            }
            with(|s| {
                for (name, w) in weights {
                    s.replaced.insert(name.clone(), w.clone());
                }
            });
            let out = run_block();
            with(|s| {
                for (name, _) in weights {
                    s.replaced.remove(name);
                }
            });
            let out = out
                .map_err(|e| Error::Config(format!("calibration trial: {e}")))?
                .try_to_vec_f32()?;
            let sq: f64 = out
                .iter()
                .zip(reference.iter().flatten())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            Ok(sq / out.len().max(1) as f64)
        };
        let result = quantizer.quantize(&groups[..take], &mut trial);
        with(|s| s.quantizer = Some(quantizer));
        let weights = result?;
        let linears: Vec<&(Arc<str>, Tensor)> =
            groups[..take].iter().flat_map(|g| &g.linears).collect();
        if weights.len() != linears.len() {
            return Err(Error::Config(format!(
                "calibration: the quantizer returned {} weights for {} linears",
                weights.len(),
                linears.len()
            ))
            .into());
        }
        for ((name, old), new) in linears.into_iter().zip(weights) {
            if new.dims() != old.dims() {
                return Err(Error::WrongShape {
                    name: name.to_string(),
                    expected: old.dims().to_vec(),
                    found: new.dims().to_vec(),
                }
                .into());
            }
            with(|s| s.replaced.insert(name.clone(), new));
        }
    }
}

fn with<R>(f: impl FnOnce(&mut Session) -> R) -> R {
    SESSION.with(|s| f(s.borrow_mut().as_mut().expect("a calibration session")))
}

/// Called by `Linear` on each forward: records the input of the named, not yet quantized
/// linears of `ls` while a block is recording, and returns the replacement weight of each one
/// already quantized. `None` (the common case, no session) costs one thread-local read.
pub(crate) fn observe(
    ls: &[(Option<&Arc<str>>, &Tensor)],
    x: &Tensor,
) -> Result<Option<Vec<Option<Tensor>>>> {
    SESSION.with(|cell| {
        let mut guard = cell.borrow_mut();
        let Some(s) = guard.as_mut() else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(ls.len());
        let mut pending = Vec::new();
        for (name, w) in ls {
            let Some(name) = name else {
                out.push(None);
                continue;
            };
            if let Some(r) = s.replaced.get(*name) {
                out.push(Some(r.clone()));
                continue;
            }
            out.push(None);
            let skip =
                s.skipped.contains(*name) || s.quantizer.as_ref().is_some_and(|q| q.skip(name));
            if skip {
                s.skipped.insert((*name).clone());
            } else if s.recording {
                pending.push(((*name).clone(), (*w).clone()));
            }
        }
        if !pending.is_empty() {
            let (n_rows, cols) = x.dims2("calibration input")?;
            s.groups.push(InputGroup {
                block: s.block,
                x: x.try_to_vec_f32()?,
                n_rows,
                cols,
                linears: pending,
            });
        }
        Ok(Some(out))
    })
}

/// A host KV store that keeps nothing: each call attends over the step's own rows (a packed
/// prefill of whole sequences), so a block can run twice on one step.
pub struct FreshKv;

impl KvStore for FreshKv {
    fn append_attend_all(
        &mut self,
        _layer: usize,
        batch: &Batch,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttnParams,
    ) -> Result<Tensor> {
        if batch.positions.first().is_some_and(|&p| p != 0) {
            return Err(Error::Config(
                "calibration runs whole sequences from position 0".into(),
            ));
        }
        per_sequence(batch, q, k, v, params, |_, q, k, v, out| {
            attention(q, k, v, 0, params, out)
        })
    }

    fn advance(&mut self, _batch: &Batch) {}
}
