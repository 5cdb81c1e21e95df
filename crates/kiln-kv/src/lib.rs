//! kiln-kv: the KV block pool of the serving engine — block ids, reference counts, per-sequence
//! block tables and prefix caching. No tensors: the storage the ids index lives elsewhere
//! (`kiln_nn::PagedKvPool`), and this crate depends on no other kiln crate.
//!
//! Reference: vLLM's PagedAttention block manager (Kwon et al., SOSP 2023) and its v1
//! `KVCacheManager` / `BlockPool` (hash-chained prefix caching, LRU of unreferenced cached blocks).
//!
//! # Model
//! The KV cache is cut into `n_blocks` blocks of `block_size` positions (16 by default). A
//! sequence's [`BlockTable`] lists the blocks holding its positions in order: position `p` is in
//! `blocks()[p / block_size]` at offset `p % block_size`.
//!
//! Every block is in exactly one state:
//! - **free**: on the free list, content meaningless;
//! - **used**: referenced by at least one table (`refcount > 0`);
//! - **cached-evictable**: unreferenced, but registered in the prefix cache; it can be revived
//!   by a prefix match or evicted (least recently released first) when the free list is empty.
//!
//! `free + used + cached_evictable == n_blocks` always ([`PoolStats`]).
//!
//! # Prefix caching
//! A *full* block whose keys/values are computed is registered under the hash of
//! `(parent block's hash, its block_size token ids, extra key)`, so equal hashes mean equal whole
//! prefixes. [`BlockPool::match_prefix`] walks a new prompt's full blocks and takes a reference on
//! each cached one until the first miss. Only registered full blocks are ever shared between
//! tables. A match never covers the whole prompt: the last prompt token is always left to compute,
//! since its logits are needed (as in vLLM).
//!
//! # The step protocol (what the engine does)
//! ```text
//! let (mut table, cached) = pool.match_prefix(&prompt);  // cached positions need no compute
//! pool.grow(&mut table, n_new)?;       // room for this step's tokens (all-or-nothing)
//! // ... the model writes K/V of positions table.n_tokens()-n_new .. into table.blocks() ...
//! pool.commit(&mut table, &tokens_computed_so_far)?;   // registers newly full blocks
//! pool.release_before(&mut table, pos + 1 - window);   // only if every layer is windowed
//! pool.release(&mut table);             // finished or preempted
//! ```
//!
//! # API
//! - [`BlockPool::new`]`(n_blocks, block_size, prefix_caching)`, [`blocks_for_budget`]
//! - [`BlockPool::match_prefix`] / [`BlockPool::match_prefix_keyed`] → `(BlockTable, cached)`
//! - [`BlockPool::can_grow`], [`BlockPool::grow`], [`BlockPool::commit`],
//!   [`BlockPool::release`], [`BlockPool::release_before`], [`BlockPool::stats`],
//!   [`BlockPool::available`], [`BlockPool::block_size`], [`BlockPool::n_blocks`]
//! - [`BlockTable::blocks`], [`BlockTable::n_tokens`], [`BlockTable::new`]; [`NO_BLOCK`] marks
//!   entries released by `release_before`.

mod hash;
mod pool;
mod table;

pub use hash::{block_hash, BlockHash};
pub use pool::{blocks_for_budget, BlockPool, Error, OutOfBlocks, PoolStats};
pub use table::BlockTable;

/// Index of a block in the pool (and in every layer's KV storage).
pub type BlockId = u32;

/// Table entry of a block released because it fell entirely out of the attention window.
pub const NO_BLOCK: BlockId = u32::MAX;

/// The block size used unless the caller chooses otherwise (vLLM's default on GPU).
pub const DEFAULT_BLOCK_SIZE: usize = 16;
