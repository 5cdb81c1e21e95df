//! [`Tensor::attention`](crate::Tensor::attention) on the host over packed rows
//! ([`KvLayout::rows`]: an encoder's own keys, a cross-attention memory, a contiguous cache):
//! the fast kernels the CPU engine always used, run per sequence.
//!
//! Each maximal run of query rows that belong to one sequence at consecutive positions is one
//! call of [`attention`] over that sequence's key rows (`table[s] .. table[s] + seq_len[s]`),
//! with the run's first position as `q_start`: exactly the semantics of the reference in
//! `backend.rs`. Bidirectional self-attention of an encoder batch (every sequence's queries are
//! its keys) takes [`attention_varlen`], parallel over sequences. Anything else (f16/bf16,
//! strided views, a paged layout) returns `None` and goes to the reference.

use super::attention::{attention, AttnParams, RelativeBias};
use super::encoder::attention_varlen;
use crate::attn::{AttnArgs, KvLayout};
use crate::{Result, Tensor};

/// `Some(output)` when `a` is packed host f32 rows, else `None`.
pub(crate) fn rows_attention(a: &AttnArgs) -> Option<Result<Tensor>> {
    if a.layout != KvLayout::rows(a.n_kv_heads, a.head_dim) {
        return None;
    }
    let (q, k, v) = (
        a.q.as_f32_slice().ok()?,
        a.k.as_f32_slice().ok()?,
        a.v.as_f32_slice().ok()?,
    );
    let meta = a.meta;
    let (tok_seq, tok_pos) = (
        meta.tok_seq.as_u32_slice().ok()?,
        meta.tok_pos.as_u32_slice().ok()?,
    );
    let (seq_len, tables) = (
        meta.seq_len.as_u32_slice().ok()?,
        meta.block_tables.as_u32_slice().ok()?,
    );
    let alibi = match a.alibi {
        Some(t) => Some(t.as_f32_slice().ok()?),
        None => None,
    };
    let rel_bias = match a.rel_bias {
        Some(r) => Some(RelativeBias {
            values: r.values.as_f32_slice().ok()?,
            min_rel: r.min_rel,
            n_rel: r.n_rel,
        }),
        None => None,
    };
    Some(run(
        a, q, k, v, tok_seq, tok_pos, seq_len, tables, alibi, rel_bias,
    ))
}

#[allow(clippy::too_many_arguments)]
fn run(
    a: &AttnArgs,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tok_seq: &[u32],
    tok_pos: &[u32],
    seq_len: &[u32],
    tables: &[u32],
    alibi: Option<&[f32]>,
    rel_bias: Option<RelativeBias>,
) -> Result<Tensor> {
    let n = a.check()?;
    let (q_row, kv_row) = (a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim);
    let width = *a.meta.block_tables.dims().last().unwrap_or(&1);
    let n_rows = k.len() / kv_row.max(1);
    let bad = |reason: String| crate::Error::Invalid {
        op: "attention",
        reason,
    };
    // Runs of (first token, tokens, sequence).
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for t in 0..n {
        let s = tok_seq[t] as usize;
        match runs.last_mut() {
            Some((t0, len, s0))
                if *s0 == s && tok_pos[t] as usize == tok_pos[*t0] as usize + *len =>
            {
                *len += 1
            }
            _ => runs.push((t, 1, s)),
        }
    }
    let mut keys = Vec::with_capacity(runs.len());
    for &(_, _, s) in &runs {
        let (first, len) = match (tables.get(s * width), seq_len.get(s)) {
            (Some(&f), Some(&l)) => (f as usize, l as usize),
            _ => return Err(bad(format!("sequence {s} has no block table or length"))),
        };
        if first + len > n_rows {
            return Err(bad(format!(
                "rows {first}..{} of a {n_rows}-row cache",
                first + len
            )));
        }
        keys.push((first, len));
    }
    let params = AttnParams {
        n_heads: a.n_heads,
        n_kv_heads: a.n_kv_heads,
        head_dim: a.head_dim,
        scale: a.scale,
        causal: a.causal,
        window: a.window,
        alibi_slopes: alibi,
        rel_bias,
    };
    let mut out = vec![0.0f32; n * q_row];
    let plain = !a.causal && a.window.is_none() && alibi.is_none() && rel_bias.is_none();
    let self_rows = plain
        && a.n_heads == a.n_kv_heads
        && k.len() == q.len()
        && runs
            .iter()
            .zip(&keys)
            .all(|(&(t0, len, _), &(first, n_kv))| t0 == first && len == n_kv);
    if self_rows {
        let spans: Vec<(usize, usize)> = runs.iter().map(|&(t0, len, _)| (t0, len)).collect();
        attention_varlen(q, k, v, &spans, a.n_heads, a.head_dim, a.scale, &mut out);
    } else {
        for (&(t0, len, _), &(first, n_kv)) in runs.iter().zip(&keys) {
            let kv = first * kv_row..(first + n_kv) * kv_row;
            attention(
                &q[t0 * q_row..(t0 + len) * q_row],
                &k[kv.clone()],
                &v[kv],
                tok_pos[t0] as usize,
                &params,
                &mut out[t0 * q_row..(t0 + len) * q_row],
            );
        }
    }
    Tensor::from_vec(out, [n, q_row])
}

#[cfg(test)]
mod tests {
    use super::super::backend::reference_attention;
    use crate::attn::{AttnArgs, HostMeta, KvLayout, RelBias};
    use crate::{Device, Tensor};

    fn rand(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    /// Every kind of call the models make over packed rows — an encoder batch, T5's biased
    /// encoder, a causal cache with ALiBi and GQA, a cross-attention memory shared by several
    /// sequences, a sliding window — against the f64 definition.
    #[test]
    fn packed_rows_match_the_reference() {
        let (hd, n_rel) = (8usize, 64usize);
        type Case = (
            &'static str,
            usize,
            usize,
            bool,
            Option<usize>,
            bool,
            bool,
            HostMeta,
            usize,
        );
        let encoder = HostMeta {
            tok_seq: [vec![0; 5], vec![1; 9], vec![2; 1]].concat(),
            tok_pos: [(0..5).collect::<Vec<u32>>(), (0..9).collect(), vec![0]].concat(),
            seq_len: vec![5, 9, 1],
            tables: vec![vec![0], vec![5], vec![14]],
        };
        let cached = HostMeta {
            tok_seq: vec![0; 3],
            tok_pos: vec![20, 21, 22],
            seq_len: vec![23],
            tables: vec![vec![0]],
        };
        let cross = HostMeta {
            tok_seq: vec![0, 0, 1, 1, 1],
            tok_pos: vec![0, 1, 4, 5, 6],
            seq_len: vec![7, 7],
            tables: vec![vec![0], vec![0]],
        };
        let cases: Vec<Case> = vec![
            (
                "encoder batch",
                4,
                4,
                false,
                None,
                false,
                false,
                encoder.clone(),
                15,
            ),
            (
                "biased encoder",
                4,
                4,
                false,
                None,
                false,
                true,
                encoder,
                15,
            ),
            (
                "causal cache, alibi, gqa",
                4,
                2,
                true,
                None,
                true,
                false,
                cached.clone(),
                23,
            ),
            (
                "sliding window",
                4,
                1,
                true,
                Some(5),
                false,
                false,
                cached,
                23,
            ),
            (
                "shared cross memory",
                2,
                2,
                false,
                None,
                false,
                false,
                cross,
                7,
            ),
        ];
        for (name, n_heads, n_kv, causal, window, alibi, rel, host, n_rows) in cases {
            let n = host.tok_seq.len();
            let q = Tensor::from_vec(rand(n * n_heads * hd, 1), [n, n_heads * hd]).unwrap();
            let k = Tensor::from_vec(rand(n_rows * n_kv * hd, 2), [n_rows, n_kv * hd]).unwrap();
            let v = Tensor::from_vec(rand(n_rows * n_kv * hd, 3), [n_rows, n_kv * hd]).unwrap();
            let slopes = Tensor::from_vec(
                (0..n_heads).map(|h| 0.5f32.powi(h as i32 + 1)).collect(),
                [n_heads],
            )
            .unwrap();
            let table = Tensor::from_vec(rand(n_heads * n_rel, 4), [n_heads, n_rel]).unwrap();
            let meta = host.upload(Device::Cpu).unwrap();
            let args = AttnArgs {
                q: &q,
                k: &k,
                v: &v,
                layout: KvLayout::rows(n_kv, hd),
                meta: &meta,
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                scale: 0.35,
                causal,
                window,
                alibi: alibi.then_some(&slopes),
                rel_bias: rel.then_some(RelBias {
                    values: &table,
                    min_rel: -32,
                    n_rel,
                }),
            };
            let got = super::rows_attention(&args)
                .expect("packed rows take the fast path")
                .unwrap();
            let want = reference_attention(&args).unwrap();
            let (g, w) = (got.to_vec_f32(), want.to_vec_f32());
            let worst = g
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{name}: {worst}");
        }
    }
}
