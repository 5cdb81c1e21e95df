//! Block pool scenarios with known answers: prefix sharing, LRU eviction order, windows, stats.

use kiln_kv::{blocks_for_budget, BlockPool, Error, OutOfBlocks, NO_BLOCK};

fn prompt(n: u32) -> Vec<u32> {
    (0..n).collect()
}

#[test]
fn prefix_hit_shares_full_blocks_and_leaves_last_token() {
    let mut pool = BlockPool::new(10, 4, true).unwrap();
    let p = prompt(10);
    let (mut a, cached) = pool.match_prefix(&p);
    assert_eq!(cached, 0);
    pool.grow(&mut a, 10).unwrap();
    assert_eq!(a.blocks(), &[0, 1, 2]);
    pool.commit(&mut a, &p).unwrap();
    // Two full blocks registered; the partial third is not.
    assert_eq!(pool.stats().cached, 2);
    let (b, cached) = pool.match_prefix(&p);
    assert_eq!((b.blocks(), cached), (&[0u32, 1][..], 8));
    assert_eq!(pool.refcount(0), 2);
    // A prompt of exactly two blocks matches only one: its last token must be computed.
    let (mut c, cached) = pool.match_prefix(&p[..8]);
    assert_eq!(cached, 4);
    pool.release(&mut c);
    let s = pool.stats();
    assert_eq!((s.prefix_query_tokens, s.prefix_hit_tokens), (28, 12));
}

#[test]
fn extra_key_separates_caches() {
    let mut pool = BlockPool::new(4, 2, true).unwrap();
    let p = prompt(5);
    let (mut a, _) = pool.match_prefix_keyed(&p, 7);
    pool.grow(&mut a, 5).unwrap();
    pool.commit(&mut a, &p).unwrap();
    assert_eq!(pool.match_prefix_keyed(&p, 8).1, 0);
    assert_eq!(pool.match_prefix_keyed(&p, 7).1, 4);
}

#[test]
fn eviction_is_lru_tail_first_and_hits_revive() {
    let mut pool = BlockPool::new(3, 2, true).unwrap();
    let p = prompt(7);
    let (mut a, _) = pool.match_prefix(&p);
    pool.grow(&mut a, 6).unwrap();
    pool.commit(&mut a, &p[..6]).unwrap();
    pool.release(&mut a);
    let s = pool.stats();
    assert_eq!((s.free, s.cached_evictable, s.used), (0, 3, 0));
    // Needing one block evicts the chain's tail (block 2), keeping the shorter prefix.
    let mut t = kiln_kv::BlockTable::new();
    pool.grow(&mut t, 1).unwrap();
    assert_eq!(t.blocks(), &[2]);
    assert_eq!(pool.stats().evictions, 1);
    let (h, cached) = pool.match_prefix(&p);
    assert_eq!((h.blocks(), cached), (&[0u32, 1][..], 4));
    assert_eq!(pool.stats().cached_evictable, 0);
    assert_eq!(
        pool.grow(&mut t, 2),
        Err(OutOfBlocks {
            needed: 1,
            available: 0
        })
    );
}

#[test]
fn release_before_frees_whole_blocks_only() {
    let mut pool = BlockPool::new(8, 4, false).unwrap();
    let mut t = kiln_kv::BlockTable::new();
    pool.grow(&mut t, 14).unwrap();
    pool.release_before(&mut t, 9);
    assert_eq!(t.blocks(), &[NO_BLOCK, NO_BLOCK, 2, 3]);
    assert_eq!(t.n_tokens(), 14);
    assert_eq!(pool.stats().used, 2);
    pool.grow(&mut t, 3).unwrap();
    assert_eq!(t.blocks().len(), 5);
    pool.release(&mut t);
    assert_eq!(pool.stats().free, 8);
}

#[test]
fn stats_waste_and_budget() {
    let mut pool = BlockPool::new(8, 4, false).unwrap();
    let mut t = kiln_kv::BlockTable::new();
    pool.grow(&mut t, 5).unwrap();
    let s = pool.stats();
    assert_eq!((s.slots_allocated, s.slots_filled), (8, 5));
    assert!((s.kv_waste() - 3.0 / 8.0).abs() < 1e-12);
    assert_eq!(blocks_for_budget(1000, 96), 10);
    assert_eq!(blocks_for_budget(1000, 0), 0);
    assert!(matches!(
        BlockPool::new(4, 0, true),
        Err(Error::InvalidPool { .. })
    ));
    assert!(matches!(
        pool.commit(&mut t, &prompt(6)),
        Err(Error::CommitPastTable {
            tokens: 6,
            n_tokens: 5
        })
    ));
}
