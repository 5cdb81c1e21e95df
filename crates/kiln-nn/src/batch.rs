//! [`Batch`]: the layout of one forward step — which packed rows belong to which sequence, at
//! which positions — and the step's device metadata, uploaded once per step and read by every
//! layer: the positions (rotary embeddings) and, for encoders, the attention metadata of each
//! sequence attending to its own rows.

use std::sync::OnceLock;

use kiln_tensor::{AttnMeta, Device, HostMeta, Tensor};

use crate::Result;

/// Rows `start..start + len` of a packed step belong to one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    pub start: usize,
    pub len: usize,
}

impl SeqSpan {
    /// The span's elements in a packed buffer of `width` values per row.
    pub fn elems(&self, width: usize) -> std::ops::Range<usize> {
        self.start * width..(self.start + self.len) * width
    }
}

/// The layout of one forward step: per-token positions and per-sequence row spans.
#[derive(Debug, Clone)]
pub struct Batch {
    pub positions: Vec<usize>,
    pub seqs: Vec<SeqSpan>,
    /// `positions` as a u32 tensor on the step's device, made on first use.
    on_device: OnceLock<Tensor>,
    /// [`Batch::encoder_meta`], made on first use.
    encoder_meta: OnceLock<AttnMeta>,
}

impl Batch {
    pub fn new(positions: Vec<usize>, seqs: Vec<SeqSpan>) -> Batch {
        Batch {
            positions,
            seqs,
            on_device: OnceLock::new(),
            encoder_meta: OnceLock::new(),
        }
    }

    /// One sequence of `n` new tokens following `cached` already-cached positions.
    pub fn single(cached: usize, n: usize) -> Batch {
        Batch::new(
            (cached..cached + n).collect(),
            vec![SeqSpan { start: 0, len: n }],
        )
    }

    /// Sequences of the given lengths packed back to back, each at positions `0..len` (an
    /// encoder batch: no cache, no padding).
    pub fn packed(lens: &[usize]) -> Batch {
        let mut seqs = Vec::with_capacity(lens.len());
        let mut positions = Vec::with_capacity(lens.iter().sum());
        for &len in lens {
            seqs.push(SeqSpan {
                start: positions.len(),
                len,
            });
            positions.extend(0..len);
        }
        Batch::new(positions, seqs)
    }

    pub fn n_tokens(&self) -> usize {
        self.positions.len()
    }

    /// The positions as a `(n_tokens,)` u32 tensor on `device`: uploaded by the first layer
    /// that asks, shared (a cheap handle clone) by the rest of the step.
    pub fn positions_on(&self, device: Device) -> Result<Tensor> {
        if let Some(t) = self.on_device.get().filter(|t| t.device() == device) {
            return Ok(t.clone());
        }
        let host = self
            .positions
            .iter()
            .map(|&p| {
                u32::try_from(p).map_err(|_| kiln_tensor::Error::Invalid {
                    op: "positions",
                    reason: format!("position {p} does not fit in u32"),
                })
            })
            .collect::<std::result::Result<Vec<u32>, _>>()?;
        let t = Tensor::from_u32(host, [self.positions.len()])?.to_device(device)?;
        // The first device asked keeps the memo (a step runs on one device).
        let _ = self.on_device.set(t.clone());
        Ok(t)
    }

    /// The attention metadata of bidirectional self-attention over the step's own rows (an
    /// encoder): the rows of each span are its keys ([`kiln_tensor::KvLayout::rows`], table entry
    /// = the span's first row), numbered from 0. Uploaded by the first layer that asks.
    pub fn encoder_meta(&self, device: Device) -> Result<AttnMeta> {
        if let Some(m) = self
            .encoder_meta
            .get()
            .filter(|m| m.tok_seq.device() == device)
        {
            return Ok(m.clone());
        }
        let mut host = HostMeta::default();
        for (i, span) in self.seqs.iter().enumerate() {
            host.tok_seq.extend(std::iter::repeat_n(i as u32, span.len));
            host.tok_pos.extend(0..span.len as u32);
            host.seq_len.push(span.len as u32);
            host.tables.push(vec![span.start as u32]);
        }
        if host.tok_seq.len() != self.n_tokens() {
            return Err(kiln_tensor::Error::Invalid {
                op: "encoder attention",
                reason: format!(
                    "spans cover {} of {} rows",
                    host.tok_seq.len(),
                    self.n_tokens()
                ),
            }
            .into());
        }
        let meta = host.upload(device)?;
        let _ = self.encoder_meta.set(meta.clone());
        Ok(meta)
    }
}
