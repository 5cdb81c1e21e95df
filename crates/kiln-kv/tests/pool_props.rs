//! Property tests of the block pool: random operation sequences against a model of what every
//! block holds. Each position written is recorded in a simulated storage, so a prefix hit that
//! returned a block holding other tokens (a stale or wrongly shared block) is caught.

use kiln_kv::{BlockPool, BlockTable, NO_BLOCK};
use proptest::prelude::*;

const BS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Admit a sequence whose prompt is `len` tokens of prefix family `family`.
    Start {
        family: u8,
        len: usize,
    },
    /// Decode `n` tokens on the `seq`-th live sequence (modulo the count).
    Step {
        seq: usize,
        n: usize,
    },
    Release {
        seq: usize,
    },
    /// Sliding window: release what lies before `n_tokens - keep`.
    Window {
        seq: usize,
        keep: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1usize..20).prop_map(|(family, len)| Op::Start { family, len }),
        (0usize..8, 1usize..6).prop_map(|(seq, n)| Op::Step { seq, n }),
        (0usize..8).prop_map(|seq| Op::Release { seq }),
        (0usize..8, 1usize..10).prop_map(|(seq, keep)| Op::Window { seq, keep }),
    ]
}

struct Seq {
    table: BlockTable,
    tokens: Vec<u32>,
}

struct World {
    pool: BlockPool,
    seqs: Vec<Seq>,
    /// Simulated KV storage: the token written at each (block, offset).
    storage: Vec<Vec<Option<u32>>>,
    next_token: u32,
}

impl World {
    fn write(&mut self, seq: usize, from: usize) {
        let s = &self.seqs[seq];
        for p in from..s.tokens.len() {
            let b = s.table.blocks()[p / BS];
            assert_ne!(b, NO_BLOCK, "writing into a released block");
            self.storage[b as usize][p % BS] = Some(s.tokens[p]);
        }
    }

    fn start(&mut self, family: u8, len: usize) {
        // Families share their prefix tokens, so prompts hit each other's blocks.
        let tokens: Vec<u32> = (0..len as u32).map(|i| family as u32 * 1000 + i).collect();
        let (mut table, cached) = self.pool.match_prefix(&tokens);
        assert!(
            cached < tokens.len(),
            "a match leaves the last token to compute"
        );
        assert_eq!(cached % BS, 0);
        assert_eq!(table.n_tokens(), cached);
        for (p, &tok) in tokens.iter().enumerate().take(cached) {
            let b = table.blocks()[p / BS] as usize;
            assert_eq!(
                self.storage[b][p % BS],
                Some(tok),
                "prefix hit on wrong data"
            );
        }
        // Matching again gives the same blocks.
        let (mut again, cached2) = self.pool.match_prefix(&tokens);
        assert_eq!((again.blocks(), cached2), (table.blocks(), cached));
        self.pool.release(&mut again);
        if self.pool.grow(&mut table, tokens.len() - cached).is_err() {
            self.pool.release(&mut table);
            return;
        }
        self.seqs.push(Seq { table, tokens });
        let i = self.seqs.len() - 1;
        self.write(i, cached);
        let s = &mut self.seqs[i];
        self.pool.commit(&mut s.table, &s.tokens).unwrap();
    }

    fn step(&mut self, seq: usize, n: usize) {
        let s = &mut self.seqs[seq];
        let can = self.pool.can_grow(&s.table, n);
        let before = (s.table.clone(), self.pool.stats());
        let grown = self.pool.grow(&mut s.table, n);
        assert_eq!(can, grown.is_ok());
        if grown.is_err() {
            assert_eq!(
                (s.table.clone(), self.pool.stats()),
                before,
                "grow is all-or-nothing"
            );
            return;
        }
        let from = s.tokens.len();
        for _ in 0..n {
            s.tokens.push(self.next_token);
            self.next_token += 1;
        }
        self.write(seq, from);
        let s = &mut self.seqs[seq];
        self.pool.commit(&mut s.table, &s.tokens).unwrap();
    }

    fn check(&self) {
        let st = self.pool.stats();
        assert_eq!(st.free + st.used + st.cached_evictable, st.n_blocks);
        let mut refs = vec![0u32; st.n_blocks];
        for s in &self.seqs {
            assert_eq!(s.table.blocks().len(), s.table.n_tokens().div_ceil(BS));
            for &b in s.table.blocks().iter().filter(|&&b| b != NO_BLOCK) {
                refs[b as usize] += 1;
            }
        }
        let mut used = 0;
        for (b, &r) in refs.iter().enumerate() {
            assert_eq!(self.pool.refcount(b as u32), r, "refcount of block {b}");
            if r > 0 {
                used += 1;
            }
            if r > 1 {
                assert!(
                    self.pool.is_cached(b as u32),
                    "block {b} shared but not a prefix block"
                );
                assert!(
                    self.storage[b].iter().all(Option::is_some),
                    "shared block {b} not full"
                );
            }
        }
        assert_eq!(used, st.used);
        assert!(st.slots_filled <= st.slots_allocated);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn pool_invariants(
        ops in prop::collection::vec(op(), 1..60),
        n_blocks in 4usize..24,
        caching in prop::bool::weighted(0.8),
    ) {
        let mut w = World {
            pool: BlockPool::new(n_blocks, BS, caching).unwrap(),
            seqs: Vec::new(),
            storage: vec![vec![None; BS]; n_blocks],
            next_token: 1_000_000,
        };
        for op in ops {
            match op {
                Op::Start { family, len } => w.start(family, len),
                Op::Step { seq, n } if !w.seqs.is_empty() => {
                    let i = seq % w.seqs.len();
                    w.step(i, n);
                }
                Op::Release { seq } if !w.seqs.is_empty() => {
                    let mut s = w.seqs.swap_remove(seq % w.seqs.len());
                    w.pool.release(&mut s.table);
                    assert!(s.table.blocks().is_empty());
                }
                Op::Window { seq, keep } if !w.seqs.is_empty() => {
                    let i = seq % w.seqs.len();
                    let s = &mut w.seqs[i];
                    let pos = s.table.n_tokens().saturating_sub(keep);
                    w.pool.release_before(&mut s.table, pos);
                    let released = pos / BS;
                    prop_assert!(s.table.blocks()[..released.min(s.table.blocks().len())]
                        .iter().all(|&b| b == NO_BLOCK));
                }
                _ => {}
            }
            w.check();
        }
        for mut s in std::mem::take(&mut w.seqs) {
            w.pool.release(&mut s.table);
        }
        w.check();
        let st = w.pool.stats();
        prop_assert_eq!(st.used, 0);
        prop_assert_eq!(st.free + st.cached_evictable, n_blocks);
        prop_assert_eq!(st.cached, st.cached_evictable);
        if !caching {
            prop_assert_eq!((st.cached, st.prefix_hit_tokens), (0, 0));
        }
    }
}
