//! A per-sequence key/value cache: for each layer, the keys and values of every position so far,
//! packed `(len, n_kv_heads, head_dim)`. The paged block cache of the serving engine replaces the
//! storage but not this contract: attention appends a step's rows, then reads all rows.

use kiln_tensor::Tensor;

#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Positions already written to every layer.
    len: usize,
    row: usize,
    /// The same rows on a device, when the model runs there (`kv_store.rs`).
    pub(crate) device: Option<DeviceRows>,
}

/// A device cache: per layer K and V `(capacity, n_kv_heads, 1, head_dim)` — a pool of one-row
/// blocks, so `Tensor::kv_write` appends at slot = position and `Tensor::attention` reads it
/// as packed rows — and the current step's metadata, shared by its layers.
#[derive(Debug)]
pub(crate) struct DeviceRows {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// The step being run, uploaded by its first layer.
    pub step: Option<crate::kv_store::RowsStep>,
}

impl Clone for KvCache {
    /// A deep copy: device rows are written in place, so a clone (beam search forks) gets its
    /// own buffers. Panics only if the device cannot hold the copy.
    fn clone(&self) -> KvCache {
        KvCache {
            layers: self.layers.clone(),
            len: self.len,
            row: self.row,
            device: self.device.as_ref().map(|d| DeviceRows {
                layers: d
                    .layers
                    .iter()
                    .map(|l| {
                        l.as_ref().map(|(k, v)| {
                            let copy = |t: &Tensor| {
                                t.deep_copy().expect("device memory for a KV cache copy")
                            };
                            (copy(k), copy(v))
                        })
                    })
                    .collect(),
                step: None,
            }),
        }
    }
}

impl KvCache {
    /// `row` = n_kv_heads * head_dim, the floats per position per layer.
    pub fn new(n_layers: usize, row: usize) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); n_layers],
            len: 0,
            row,
            device: None,
        }
    }

    /// Positions whose keys and values are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Called by the model once all layers have appended `n` new positions.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(
            self.device.is_some() || self.layers.iter().all(|l| l.k.len() == self.len * self.row)
        );
    }

    /// Drops everything after `len` positions (rewind, e.g. to re-score a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for l in &mut self.layers {
            l.k.truncate(len * self.row);
            l.v.truncate(len * self.row);
        }
        self.len = len;
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        let device: usize = self
            .device
            .iter()
            .flat_map(|d| d.layers.iter().flatten())
            .map(|(k, v)| k.dtype().bytes_for(k.elem_count() + v.elem_count()))
            .sum();
        device
            + self
                .layers
                .iter()
                .map(|l| (l.k.capacity() + l.v.capacity()) * 4)
                .sum::<usize>()
    }
}
