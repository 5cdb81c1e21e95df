//! [`BlockTable`]: one sequence's blocks, in position order.
//!
//! Invariants (kept by `BlockPool`, the only writer): `blocks.len() == ceil(n_tokens /
//! block_size)`; `hashes[i]` is the chain hash of full block `i` for `i < hashes.len()`, and
//! `hashes.len() * block_size <= n_tokens`; every entry other than [`NO_BLOCK`] holds one reference.

use crate::{BlockHash, BlockId, NO_BLOCK};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub(crate) blocks: Vec<BlockId>,
    pub(crate) n_tokens: usize,
    /// Chain hashes of the leading full blocks already committed (registered or not).
    pub(crate) hashes: Vec<BlockHash>,
    /// Separates prefix caches (see [`crate::block_hash`]).
    pub(crate) extra_key: u64,
}

impl BlockTable {
    /// An empty table (no blocks, no positions), for a sequence that skips prefix matching.
    pub fn new() -> BlockTable {
        BlockTable::default()
    }

    /// Block ids in position order; [`NO_BLOCK`] for blocks released out of the window.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Positions the table holds room for (cached + grown), including released ones.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Leading positions whose full blocks have been committed to the prefix chain.
    pub fn n_committed_blocks(&self) -> usize {
        self.hashes.len()
    }

    /// Blocks this table still references (not released).
    pub fn n_live_blocks(&self) -> usize {
        self.blocks.iter().filter(|&&b| b != NO_BLOCK).count()
    }

    pub fn is_empty(&self) -> bool {
        self.n_tokens == 0
    }
}
