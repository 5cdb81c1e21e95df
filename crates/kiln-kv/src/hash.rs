//! The prefix-cache key of a full block: a hash chain over token ids.
//!
//! `hash(block i) = H(hash(block i-1), extra, tokens of block i)`, so a block's hash names its
//! whole prefix, not only its own tokens. H is std's SipHash-1-3 with fixed zero keys
//! (`DefaultHasher::new()`), deterministic within a build; 64 bits, so a false match needs a
//! collision among the cached blocks (probability ~ n² / 2⁶⁴). vLLM offers sha256 for
//! adversarial multi-tenant settings; that would be a drop-in change here.
//!
//! `extra` separates caches that must not share blocks for equal tokens (another model or LoRA
//! adapter, a multimodal input's content hash); 0 when unused.

use std::hash::{Hash, Hasher};

pub type BlockHash = u64;

/// Hash of a full block given its parent's hash (`None` for the first block).
pub fn block_hash(parent: Option<BlockHash>, extra: u64, tokens: &[u32]) -> BlockHash {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    extra.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_parent_tokens_and_extra() {
        let a = block_hash(None, 0, &[1, 2, 3]);
        assert_eq!(a, block_hash(None, 0, &[1, 2, 3]));
        assert_ne!(a, block_hash(Some(a), 0, &[1, 2, 3]));
        assert_ne!(a, block_hash(None, 1, &[1, 2, 3]));
        assert_ne!(a, block_hash(None, 0, &[1, 2, 4]));
    }
}
