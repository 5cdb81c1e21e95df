//! A per-sequence key/value cache: for each layer, the keys and values of every position so far,
//! packed `(len, n_kv_heads, head_dim)`. The paged block cache of the serving engine replaces the
//! storage but not this contract: attention appends a step's rows, then reads all rows.

#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Positions already written to every layer.
    len: usize,
    row: usize,
}

impl KvCache {
    /// `row` = n_kv_heads * head_dim, the floats per position per layer.
    pub fn new(n_layers: usize, row: usize) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); n_layers],
            len: 0,
            row,
        }
    }

    /// Positions whose keys and values are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Called by the model once all layers have appended `n` new positions.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.layers.iter().all(|l| l.k.len() == self.len * self.row));
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
        self.layers
            .iter()
            .map(|l| (l.k.capacity() + l.v.capacity()) * 4)
            .sum()
    }
}
