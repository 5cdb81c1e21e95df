//! [`BlockPool`]: reference-counted blocks, the free list, the prefix cache and its LRU.
//!
//! States and invariants are described in the crate doc. Implementation notes:
//! - the free list is a stack (recently freed blocks are reused first: warm in CPU caches);
//! - the LRU of cached-evictable blocks is a `BTreeMap` from a release tick to the block, so
//!   eviction takes the oldest and a prefix hit removes a block in O(log n). `release` walks a
//!   table back to front, so a chain's tail is evicted before its head (a longer prefix is
//!   worth less than the shorter prefix it extends: vLLM frees in reverse for the same reason);
//! - a block whose hash is already registered to another block (two sequences computed the
//!   same prefix concurrently) stays private and returns to the free list when released.

use std::collections::{BTreeMap, HashMap};

use crate::{block_hash, BlockHash, BlockId, BlockTable, NO_BLOCK};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out of KV blocks: {needed} needed, {available} available")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub available: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    OutOfBlocks(#[from] OutOfBlocks),
    #[error("invalid block pool: {n_blocks} blocks of {block_size} positions (need block_size > 0 and n_blocks < 2^32 - 1)")]
    InvalidPool { n_blocks: usize, block_size: usize },
    #[error("commit of {tokens} tokens into a table holding {n_tokens} positions")]
    CommitPastTable { tokens: usize, n_tokens: usize },
}

/// Number of blocks that fit in a memory budget (`bytes_per_block` covers every layer's K and V).
pub fn blocks_for_budget(budget_bytes: usize, bytes_per_block: usize) -> usize {
    budget_bytes.checked_div(bytes_per_block).unwrap_or(0)
}

#[derive(Debug, Clone, Default)]
struct Block {
    refcount: u32,
    /// Registered in the prefix cache under this hash.
    hash: Option<BlockHash>,
    /// Release tick while cached-evictable (its key in `BlockPool::evictable`).
    tick: u64,
    /// Positions of the block holding a token (for the waste statistic).
    filled: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub n_blocks: usize,
    pub block_size: usize,
    /// On the free list.
    pub free: usize,
    /// Referenced by at least one table.
    pub used: usize,
    /// Unreferenced but kept for prefix hits; evicted when the free list runs out.
    pub cached_evictable: usize,
    /// Blocks registered in the prefix cache (used or evictable).
    pub cached: usize,
    pub evictions: u64,
    /// Prompt tokens offered to `match_prefix`, and how many of them were found cached.
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    /// `used * block_size`, and how many of those positions hold a token.
    pub slots_allocated: usize,
    pub slots_filled: usize,
}

impl PoolStats {
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_query_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_query_tokens as f64
        }
    }

    /// Fraction of allocated positions holding no token (the tails of last blocks).
    pub fn kv_waste(&self) -> f64 {
        if self.slots_allocated == 0 {
            0.0
        } else {
            1.0 - self.slots_filled as f64 / self.slots_allocated as f64
        }
    }
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    prefix_caching: bool,
    blocks: Vec<Block>,
    free: Vec<BlockId>,
    evictable: BTreeMap<u64, BlockId>,
    cached: HashMap<BlockHash, BlockId>,
    tick: u64,
    evictions: u64,
    query_tokens: u64,
    hit_tokens: u64,
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_size: usize, prefix_caching: bool) -> Result<Self, Error> {
        if block_size == 0 || n_blocks >= NO_BLOCK as usize {
            return Err(Error::InvalidPool {
                n_blocks,
                block_size,
            });
        }
        Ok(BlockPool {
            block_size,
            prefix_caching,
            blocks: vec![Block::default(); n_blocks],
            // Reversed so that blocks are handed out 0, 1, 2, ...
            free: (0..n_blocks as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            cached: HashMap::new(),
            tick: 0,
            evictions: 0,
            query_tokens: 0,
            hit_tokens: 0,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Blocks that can be handed out now: free plus cached-evictable.
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// References of a block (0 when free or cached-evictable).
    pub fn refcount(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].refcount
    }

    /// Whether a block is registered in the prefix cache.
    pub fn is_cached(&self, block: BlockId) -> bool {
        self.blocks[block as usize].hash.is_some()
    }

    /// Looks up the longest cached prefix of `tokens` (whole blocks, never all of `tokens`) and
    /// returns a table referencing those blocks plus the number of cached positions.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> (BlockTable, usize) {
        self.match_prefix_keyed(tokens, 0)
    }

    /// [`Self::match_prefix`] within the prefix cache named by `extra_key` (model, adapter...).
    pub fn match_prefix_keyed(&mut self, tokens: &[u32], extra_key: u64) -> (BlockTable, usize) {
        let mut table = BlockTable {
            extra_key,
            ..BlockTable::default()
        };
        if !self.prefix_caching {
            return (table, 0);
        }
        // The last token is always computed: its logits start generation.
        let n_full = tokens.len().saturating_sub(1) / self.block_size;
        for chunk in tokens.chunks_exact(self.block_size).take(n_full) {
            let h = block_hash(table.hashes.last().copied(), extra_key, chunk);
            let Some(&b) = self.cached.get(&h) else {
                break;
            };
            self.incref(b);
            table.blocks.push(b);
            table.hashes.push(h);
        }
        table.n_tokens = table.blocks.len() * self.block_size;
        self.query_tokens += tokens.len() as u64;
        self.hit_tokens += table.n_tokens as u64;
        let cached = table.n_tokens;
        (table, cached)
    }

    fn blocks_needed(&self, table: &BlockTable, n_tokens: usize) -> usize {
        (table.n_tokens + n_tokens)
            .div_ceil(self.block_size)
            .saturating_sub(table.blocks.len())
    }

    /// Whether `grow(table, n_tokens)` would succeed.
    pub fn can_grow(&self, table: &BlockTable, n_tokens: usize) -> bool {
        self.blocks_needed(table, n_tokens) <= self.available()
    }

    /// Makes room for `n_tokens` more positions, allocating blocks (evicting cached ones when the
    /// free list is empty). All or nothing: on error the pool and the table are unchanged.
    pub fn grow(&mut self, table: &mut BlockTable, n_tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.blocks_needed(table, n_tokens);
        if needed > self.available() {
            return Err(OutOfBlocks {
                needed,
                available: self.available(),
            });
        }
        for _ in 0..needed {
            let b = self.allocate();
            table.blocks.push(b);
        }
        let (bs, start) = (self.block_size, table.n_tokens);
        table.n_tokens += n_tokens;
        // Record filled positions block by block (skipping blocks released out of the window).
        let mut p = start;
        while p < table.n_tokens {
            let i = p / bs;
            let end = ((i + 1) * bs).min(table.n_tokens);
            if table.blocks[i] != NO_BLOCK {
                self.blocks[table.blocks[i] as usize].filled = (end - i * bs) as u32;
            }
            p = end;
        }
        Ok(())
    }

    /// Registers the table's newly full blocks in the prefix cache. `tokens` are the sequence's
    /// tokens whose keys/values are now computed, from position 0 (the same tokens as in earlier
    /// commits); it may be shorter than `n_tokens()` (positions grown but not yet computed).
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32]) -> Result<(), Error> {
        if tokens.len() > table.n_tokens {
            return Err(Error::CommitPastTable {
                tokens: tokens.len(),
                n_tokens: table.n_tokens,
            });
        }
        if !self.prefix_caching {
            return Ok(());
        }
        let bs = self.block_size;
        for i in table.hashes.len()..tokens.len() / bs {
            let h = block_hash(
                table.hashes.last().copied(),
                table.extra_key,
                &tokens[i * bs..(i + 1) * bs],
            );
            table.hashes.push(h);
            let b = table.blocks[i];
            if b == NO_BLOCK || self.blocks[b as usize].hash.is_some() {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(h) {
                e.insert(b);
                self.blocks[b as usize].hash = Some(h);
            }
        }
        Ok(())
    }

    /// Drops every reference of the table and empties it. Registered blocks whose last
    /// reference goes become cached-evictable; the others return to the free list.
    pub fn release(&mut self, table: &mut BlockTable) {
        for &b in table.blocks.iter().rev() {
            if b != NO_BLOCK {
                self.decref(b);
            }
        }
        *table = BlockTable {
            extra_key: table.extra_key,
            ..BlockTable::default()
        };
    }

    /// Releases the blocks lying entirely before `position` (every position `< position`), for
    /// models whose every layer attends only within a sliding window. Their entries become
    /// [`NO_BLOCK`]; `n_tokens()` is unchanged.
    pub fn release_before(&mut self, table: &mut BlockTable, position: usize) {
        let n = (position / self.block_size).min(table.blocks.len());
        for i in 0..n {
            let b = std::mem::replace(&mut table.blocks[i], NO_BLOCK);
            if b != NO_BLOCK {
                self.decref(b);
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let mut s = PoolStats {
            n_blocks: self.blocks.len(),
            block_size: self.block_size,
            free: self.free.len(),
            cached_evictable: self.evictable.len(),
            cached: self.cached.len(),
            evictions: self.evictions,
            prefix_query_tokens: self.query_tokens,
            prefix_hit_tokens: self.hit_tokens,
            ..PoolStats::default()
        };
        for b in self.blocks.iter().filter(|b| b.refcount > 0) {
            s.used += 1;
            s.slots_filled += b.filled as usize;
        }
        s.slots_allocated = s.used * self.block_size;
        s
    }

    fn allocate(&mut self) -> BlockId {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self
                    .evictable
                    .pop_first()
                    .expect("allocate is called only when available() covers the request");
                let block = &mut self.blocks[b as usize];
                if let Some(h) = block.hash.take() {
                    if self.cached.get(&h) == Some(&b) {
                        self.cached.remove(&h);
                    }
                }
                self.evictions += 1;
                b
            }
        };
        let block = &mut self.blocks[b as usize];
        block.refcount = 1;
        block.filled = 0;
        b
    }

    fn incref(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        if block.refcount == 0 {
            self.evictable.remove(&block.tick);
        }
        block.refcount += 1;
    }

    fn decref(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        block.refcount = block
            .refcount
            .checked_sub(1)
            .expect("a table entry other than NO_BLOCK holds one reference");
        if block.refcount == 0 {
            if block.hash.is_some() {
                self.tick += 1;
                block.tick = self.tick;
                self.evictable.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }
}
