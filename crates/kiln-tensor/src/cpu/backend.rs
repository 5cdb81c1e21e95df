//! The CPU backend: each method calls the kernels this module always had (so CPU results are
//! bit-identical to before the device layer). Attention over packed rows (encoders, cross
//! attention) runs the engine's kernels (`rows_attention.rs`); other layouts, and the KV-write
//! op, which the CPU engine's own KV stores do not use (they read their pools in place,
//! `paged_attention.rs`), run a plain reference that the conformance suite holds CUDA to.

use crate::attn::AttnArgs;
use crate::backend::Backend;
use crate::op::{BinaryOp, NormOp, Op, RopeStyle, UnaryOp};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Storage, Tensor};
use kiln_quant::QMatrix;

use super::{activation as act, elementwise, matmul, norm, rope, softmax};

pub(crate) struct CpuBackend;

fn u32s<'a>(t: &'a Tensor, op: &'static str) -> Result<std::borrow::Cow<'a, [u32]>> {
    match t.as_u32_slice() {
        Ok(s) => Ok(s.into()),
        Err(_) if t.dtype() == DType::U32 => Ok(t.to_vec_u32()?.into()),
        Err(_) => Err(Error::DType {
            op,
            dtype: t.dtype(),
        }),
    }
}

impl Backend for CpuBackend {
    fn supports(&self, op: Op, dtype: DType) -> bool {
        // Every op computes in f32; f16/bf16 inputs are widened (weights are converted at
        // load, so this only meets tests and odd checkpoints).
        // Block formats: kiln-quant's integer kernels, and row dequantization for lookups.
        match (op, dtype) {
            (Op::Copy | Op::Cast(_), _) => true,
            (Op::QMatmul | Op::Gather, DType::Quant(_)) => true,
            (_, d) => d.is_float(),
        }
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        matmul::matmul(a, b)
    }

    fn qmatmul(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        let (n, _) = x.dims2("quantized matmul")?;
        let mats: Vec<&QMatrix> = ws
            .iter()
            .map(|w| w.host_qmatrix("quantized matmul"))
            .collect::<Result<_>>()?;
        let x = x.to_f32();
        let x = x.as_f32_slice()?;
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0f32; n * m.rows()]).collect();
        match (&mats[..], &mut outs[..]) {
            ([m], [out]) => m.matmul(x, n, out)?,
            _ => {
                let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                QMatrix::matmul_many(&mats, x, n, &mut slices)?;
            }
        }
        mats.iter()
            .zip(outs)
            .map(|(m, y)| Tensor::from_vec(y, [n, m.rows()]))
            .collect()
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        Ok(match op {
            UnaryOp::Silu => elementwise::unary(x, act::silu),
            UnaryOp::Gelu => {
                // The vectorised, parallel pass of the encoders (the same erf as `act::gelu_erf`).
                let mut data = x.to_vec_f32();
                super::encoder::gelu_erf_in_place(&mut data, *x.dims().last().unwrap_or(&1));
                Tensor::from_vec(data, x.shape().clone())?
            }
            UnaryOp::GeluTanh => elementwise::unary(x, act::gelu_tanh),
            UnaryOp::Relu => elementwise::unary(x, |v| v.max(0.0)),
            UnaryOp::Tanh => elementwise::unary(x, f32::tanh),
            UnaryOp::Scale(s) => elementwise::unary(x, |v| v * s),
        })
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match op {
            BinaryOp::Add => elementwise::binary(a, b, "add", |x, y| x + y),
            BinaryOp::Mul => elementwise::binary(a, b, "mul", |x, y| x * y),
        }
    }

    fn gated(&self, op: UnaryOp, gate: Tensor, up: &Tensor) -> Result<Tensor> {
        let shape = gate.shape().clone();
        let mut h = gate.into_f32_vec();
        let up = up.to_f32();
        let up = up.as_f32_slice()?;
        // Each arm monomorphises the kernel, so the activation inlines.
        match op {
            UnaryOp::Silu => elementwise::gated_in_place(&mut h, up, act::silu),
            UnaryOp::Gelu => elementwise::gated_in_place(&mut h, up, act::gelu_erf),
            UnaryOp::GeluTanh => elementwise::gated_in_place(&mut h, up, act::gelu_tanh),
            UnaryOp::Relu => elementwise::gated_in_place(&mut h, up, |x| x.max(0.0)),
            UnaryOp::Tanh => elementwise::gated_in_place(&mut h, up, f32::tanh),
            UnaryOp::Scale(s) => elementwise::gated_in_place(&mut h, up, |x| x * s),
        }
        Tensor::from_vec(h, shape)
    }

    fn norm(
        &self,
        op: NormOp,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        match op {
            NormOp::Rms => norm::rms_norm(x, w, eps),
            NormOp::Layer => norm::layer_norm(x, w, b, eps),
        }
    }

    fn add_norm(
        &self,
        op: NormOp,
        x: Tensor,
        residual: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        if op != NormOp::Layer {
            let sum = self.binary(BinaryOp::Add, &x, residual)?;
            return self.norm(op, &sum, w, b, eps);
        }
        let shape = x.shape().clone();
        let (w, b) = (w.to_f32(), b.map(Tensor::to_f32));
        let mut y = residual.to_vec_f32();
        let mut out = x.into_f32_vec();
        let bias = match &b {
            Some(b) => Some(b.as_f32_slice()?),
            None => None,
        };
        super::encoder::add_layer_norm_in_place(&mut out, &mut y, w.as_f32_slice()?, bias, eps);
        Tensor::from_vec(out, shape)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let cols = *x.dims().last().unwrap_or(&1);
        let mut data = x.to_vec_f32();
        if cols > 0 {
            data.chunks_mut(cols).for_each(softmax::softmax_in_place);
        }
        Tensor::from_vec(data, x.shape().clone())
    }

    fn rope(
        &self,
        x: Tensor,
        positions: &Tensor,
        inv_freq: &Tensor,
        mscale: f32,
        style: RopeStyle,
    ) -> Result<Tensor> {
        let d = x.dims().to_vec();
        let (n_heads, head_dim) = (d[1], d[2]);
        let pos: Vec<usize> = u32s(positions, "rope positions")?
            .iter()
            .map(|&p| p as usize)
            .collect();
        let inv = inv_freq.to_f32();
        let mut data = x.into_f32_vec();
        rope::apply_rope(
            &mut data,
            n_heads,
            head_dim,
            &pos,
            inv.as_f32_slice()?,
            mscale,
            style,
        );
        Tensor::from_vec(data, d)
    }

    fn gather(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (rows, cols) = table.dims2("gather_rows")?;
        let ids = u32s(ids, "gather ids")?;
        if let Storage::Cpu(CpuStorage::Quant(_, q)) = &*table.storage {
            let mut out = vec![0.0f32; ids.len() * cols];
            for (row, &id) in out.chunks_mut(cols.max(1)).zip(ids.iter()) {
                q.dequantize_row(id as usize, row)?;
            }
            return Tensor::from_vec(out, [ids.len(), cols]);
        }
        let table = table.to_f32();
        let table = table.as_f32_slice()?;
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids.iter() {
            let id = id as usize;
            if id >= rows {
                return Err(Error::Index {
                    op: "gather_rows",
                    index: id,
                    size: rows,
                });
            }
            out.extend_from_slice(&table[id * cols..(id + 1) * cols]);
        }
        Tensor::from_vec(out, [ids.len(), cols])
    }

    fn combine_rows(&self, src: &Tensor, ids: &Tensor, w: &Tensor, k: usize) -> Result<Tensor> {
        let (_rows, cols) = src.dims2("combine_rows")?;
        let ids = u32s(ids, "combine_rows ids")?;
        let w = w.to_f32();
        let w = w.as_f32_slice()?;
        let src = src.to_f32();
        let src = src.as_f32_slice()?;
        let n_out = ids.len() / k.max(1);
        let mut out = vec![0.0f32; n_out * cols];
        for (i, row) in out.chunks_mut(cols.max(1)).enumerate().take(n_out) {
            for j in i * k..(i + 1) * k {
                let (id, wj) = (ids[j] as usize, w[j]);
                for (y, &x) in row.iter_mut().zip(&src[id * cols..(id + 1) * cols]) {
                    *y += wj * x;
                }
            }
        }
        Tensor::from_vec(out, [n_out, cols])
    }

    fn attention(&self, a: &AttnArgs) -> Result<Tensor> {
        // Packed host f32 rows take the engine's kernels; anything else the plain definition.
        super::rows_attention::rows_attention(a).unwrap_or_else(|| reference_attention(a))
    }

    fn kv_write(
        &self,
        k: &Tensor,
        v: &Tensor,
        kc: &mut Tensor,
        vc: &mut Tensor,
        slots: &Tensor,
    ) -> Result<()> {
        let (kd, slots) = (
            kc.dims().to_vec(),
            u32s(slots, "kv_write slots")?.into_owned(),
        );
        let [_, n_kv_heads, block_size, head_dim] = kd[..] else {
            return Err(Error::Rank {
                op: "kv_write cache",
                expected: 4,
                got: kd,
            });
        };
        let write = |rows: &Tensor, cache: &mut Tensor| -> Result<()> {
            let rows = rows.to_vec_f32();
            let dtype = cache.dtype();
            let mut c = cache.to_vec_f32();
            for (t, &slot) in slots.iter().enumerate() {
                if slot as i32 >= 0 {
                    let (b, off) = (slot as usize / block_size, slot as usize % block_size);
                    for g in 0..n_kv_heads {
                        let dst = ((b * n_kv_heads + g) * block_size + off) * head_dim;
                        let src = (t * n_kv_heads + g) * head_dim;
                        c[dst..dst + head_dim].copy_from_slice(&rows[src..src + head_dim]);
                    }
                }
            }
            *cache = Tensor::from_storage(
                Storage::Cpu(CpuStorage::from_f32(c, dtype)),
                cache.shape().clone(),
            )?;
            Ok(())
        };
        write(k, kc)?;
        write(v, vc)
    }

    fn copy(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_storage(
            Storage::Cpu(CpuStorage::from_f32(x.to_vec_f32(), x.dtype())),
            x.shape().clone(),
        )
    }

    fn cat_rows(&self, parts: &[Tensor]) -> Result<Tensor> {
        let mut dims = parts[0].dims().to_vec();
        dims[0] = parts.iter().map(|p| p.dims()[0]).sum();
        let mut data = Vec::with_capacity(dims.iter().product());
        for p in parts {
            data.extend(p.to_vec_f32());
        }
        Tensor::from_storage(
            Storage::Cpu(CpuStorage::from_f32(data, parts[0].dtype())),
            dims.into(),
        )
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        x.to_dtype(dtype)
    }
}

/// The definition of [`Tensor::attention`] as a plain loop (f64 sums): the oracle for every
/// device's kernel.
pub(crate) fn reference_attention(a: &AttnArgs) -> Result<Tensor> {
    let n = a.check()?;
    let (h_n, hd) = (a.n_heads, a.head_dim);
    let group = h_n / a.n_kv_heads;
    let q = a.q.to_vec_f32();
    let (k, v) = (a.k.to_vec_f32(), a.v.to_vec_f32());
    let tok_seq = u32s(&a.meta.tok_seq, "attention tok_seq")?;
    let tok_pos = u32s(&a.meta.tok_pos, "attention tok_pos")?;
    let seq_len = u32s(&a.meta.seq_len, "attention seq_len")?;
    let tables = u32s(&a.meta.block_tables, "attention block_tables")?;
    let width = *a.meta.block_tables.dims().last().unwrap_or(&1);
    let alibi = a.alibi.map(|t| t.to_vec_f32());
    let rel = a
        .rel_bias
        .map(|r| (r.values.to_vec_f32(), r.min_rel, r.n_rel));
    let l = a.layout;
    let mut out = vec![0.0f32; n * h_n * hd];
    for t in 0..n {
        let (s, p) = (tok_seq[t] as usize, tok_pos[t] as usize);
        let len = seq_len[s] as usize;
        let hi = if a.causal { (p + 1).min(len) } else { len };
        let lo = a.window.map_or(0, |w| (p + 1).saturating_sub(w)).min(hi);
        for h in 0..h_n {
            let g = h / group;
            let qr = &q[(t * h_n + h) * hd..][..hd];
            let at = |j: usize| {
                tables[s * width + j / l.block_size] as usize * l.block_stride
                    + g * l.head_stride
                    + (j % l.block_size) * l.row_stride
            };
            let scores: Vec<f64> = (lo..hi)
                .map(|j| {
                    let kr = &k[at(j)..][..hd];
                    let dot: f64 = qr.iter().zip(kr).map(|(&x, &y)| x as f64 * y as f64).sum();
                    let mut sc = dot * a.scale as f64;
                    if let Some(al) = &alibi {
                        sc += al[h] as f64 * (j as f64 - p as f64);
                    }
                    if let Some((vals, min_rel, n_rel)) = &rel {
                        let r = (j as isize - p as isize - min_rel) as usize;
                        sc += vals[h * n_rel + r] as f64;
                    }
                    sc
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ws: Vec<f64> = scores.iter().map(|&x| (x - m).exp()).collect();
            let z: f64 = ws.iter().sum();
            let o = &mut out[(t * h_n + h) * hd..][..hd];
            for (j, w) in (lo..hi).zip(&ws) {
                let vr = &v[at(j)..][..hd];
                for (od, &vd) in o.iter_mut().zip(vr) {
                    *od += (w / z * vd as f64) as f32;
                }
            }
        }
    }
    Tensor::from_vec(out, [n, h_n * hd])
}
