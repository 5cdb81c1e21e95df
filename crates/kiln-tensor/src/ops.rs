//! The op entry points of [`Tensor`]: each checks its operands (same device, shapes), then
//! hands them to the backend of their device (`backend::of`). CPU results are bit-identical to
//! the kernels the CPU engine has always called.

use crate::attn::AttnArgs;
use crate::backend::{self, Backend};
use crate::op::{BinaryOp, NormOp, Op, RopeStyle, UnaryOp};
use crate::{DType, Error, Result, Tensor};

fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    Ok(())
}

/// The backend of `x`, after checking that it supports `op` in `x`'s dtype.
fn backend_for(op: Op, x: &Tensor) -> Result<&'static dyn Backend> {
    let b = backend::of(x);
    if !b.supports(op, x.dtype()) {
        return Err(Error::Unsupported {
            op: op.name(),
            dtype: x.dtype(),
            device: x.device(),
        });
    }
    Ok(b)
}

impl Tensor {
    /// Whether `op` runs on this tensor's device in this tensor's dtype.
    pub fn supports(&self, op: Op) -> bool {
        backend::of(self).supports(op, self.dtype())
    }

    /// `self (m, k) · rhs (k, n) -> (m, n)`; either operand may be a strided view (e.g. a
    /// transposed weight), which the backend reads in place where it can.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        same_device("matmul", self, rhs)?;
        if rhs.dtype().quant().is_some() {
            return Err(Error::Invalid {
                op: "matmul",
                reason: format!("a {} weight multiplies through matmul_t", rhs.dtype()),
            });
        }
        backend_for(Op::Matmul, self)?.matmul(self, rhs)
    }

    /// `self (m, k) · weightᵀ` for a weight stored (n, k), as in `nn.Linear`: dense, or in a
    /// block format (the quantized matmul; f32 results on the CPU, `self`'s dtype on CUDA).
    pub fn matmul_t(&self, weight: &Tensor) -> Result<Tensor> {
        if weight.dtype().quant().is_some() {
            let [y] = self.matmul_t_many([weight])?;
            return Ok(y);
        }
        self.matmul(&weight.transpose(0, 1)?)
    }

    /// `self · wᵀ` for each of several weights (a layer's q/k/v or gate/up): quantized weights
    /// take one quantized-matmul call (the CPU quantizes `self` once, one parallel region);
    /// results equal [`matmul_t`](Self::matmul_t) each.
    pub fn matmul_t_many<const N: usize>(&self, weights: [&Tensor; N]) -> Result<[Tensor; N]> {
        let quant = weights.iter().all(|w| w.dtype().quant().is_some());
        let ys: Vec<Tensor> = if quant && N > 0 {
            let (_, k) = self.dims2("quantized matmul")?;
            for w in weights {
                same_device("quantized matmul", self, w)?;
                let (_, wk) = w.dims2("quantized matmul")?;
                if wk != k {
                    return Err(Error::ShapeMismatch {
                        op: "quantized matmul",
                        lhs: self.dims().to_vec(),
                        rhs: w.dims().to_vec(),
                    });
                }
                backend_for(Op::QMatmul, w)?;
            }
            backend::of(self).qmatmul(self, &weights)?
        } else {
            weights
                .iter()
                .map(|w| self.matmul_t(w))
                .collect::<Result<_>>()?
        };
        ys.try_into().map_err(|_| Error::Invalid {
            op: "quantized matmul",
            reason: "the backend returned the wrong number of outputs".into(),
        })
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        backend_for(Op::Unary(op), self)?.unary(op, self)
    }
    pub fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        same_device(op.name(), self, rhs)?;
        let (ld, rd) = (self.dims(), rhs.dims());
        if rd.len() > ld.len() || ld[ld.len() - rd.len()..] != *rd {
            return Err(Error::ShapeMismatch {
                op: op.name(),
                lhs: ld.to_vec(),
                rhs: rd.to_vec(),
            });
        }
        backend_for(Op::Binary(op), self)?.binary(op, self, rhs)
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, rhs)
    }
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Scale(s))
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    /// `act(self) * up` (the gated MLP's hidden state), in place when `self` is unshared.
    pub fn gated(self, act: UnaryOp, up: &Tensor) -> Result<Tensor> {
        same_device("gated", &self, up)?;
        if self.dims() != up.dims() {
            return Err(Error::ShapeMismatch {
                op: "gated",
                lhs: self.dims().to_vec(),
                rhs: up.dims().to_vec(),
            });
        }
        backend_for(Op::Gated(act), &self)?.gated(act, self, up)
    }

    /// Softmax over the last dimension.
    pub fn softmax_last(&self) -> Result<Tensor> {
        backend_for(Op::Softmax, self)?.softmax(self)
    }

    fn norm_checks(&self, w: &Tensor, b: Option<&Tensor>) -> Result<()> {
        same_device("norm", self, w)?;
        if let Some(b) = b {
            same_device("norm", self, b)?;
        }
        let cols = *self.dims().last().unwrap_or(&0);
        if w.elem_count() != cols || b.is_some_and(|b| b.elem_count() != cols) {
            return Err(Error::ShapeMismatch {
                op: "norm",
                lhs: self.dims().to_vec(),
                rhs: w.dims().to_vec(),
            });
        }
        Ok(())
    }

    fn norm(&self, op: NormOp, w: &Tensor, b: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        self.norm_checks(w, b)?;
        backend_for(Op::Norm(op), self)?.norm(op, self, w, b, eps)
    }
    /// `LayerNorm(self + residual)` over the last dimension: a post-norm block's residual (BERT,
    /// BART), one pass on the CPU; `self` is reused as the output when unshared.
    pub fn add_layer_norm(
        self,
        residual: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        same_device("add_layer_norm", &self, residual)?;
        if self.dims() != residual.dims() {
            return Err(Error::ShapeMismatch {
                op: "add_layer_norm",
                lhs: self.dims().to_vec(),
                rhs: residual.dims().to_vec(),
            });
        }
        self.norm_checks(weight, bias)?;
        backend_for(Op::Norm(NormOp::Layer), &self)?.add_norm(
            NormOp::Layer,
            self,
            residual,
            weight,
            bias,
            eps,
        )
    }

    /// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        self.norm(NormOp::Rms, weight, None, eps)
    }
    /// LayerNorm over the last dimension.
    pub fn layer_norm(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        self.norm(NormOp::Layer, weight, bias, eps)
    }

    /// Rotary embedding of `self (n_tokens, n_heads·head_dim)` (or 3-D) with `n_heads` heads,
    /// at `positions (n_tokens,)` u32 on the same device; rotates the first
    /// `2 · inv_freq.len()` dims of each head, cos and sin scaled by `mscale`.
    pub fn rope(
        self,
        n_heads: usize,
        positions: &Tensor,
        inv_freq: &Tensor,
        mscale: f32,
        style: RopeStyle,
    ) -> Result<Tensor> {
        same_device("rope", &self, positions)?;
        same_device("rope", &self, inv_freq)?;
        let n = positions.elem_count();
        let half = inv_freq.elem_count();
        let ok = n > 0 && self.elem_count().is_multiple_of(n * n_heads.max(1)) && {
            let head_dim = self.elem_count() / (n * n_heads.max(1));
            2 * half <= head_dim
        };
        if !(ok || self.elem_count() == 0) {
            return Err(Error::ShapeMismatch {
                op: "rope",
                lhs: self.dims().to_vec(),
                rhs: vec![n, n_heads, 2 * half],
            });
        }
        if self.elem_count() == 0 {
            return Ok(self);
        }
        let x = self.reshape([n, n_heads, self.elem_count() / (n * n_heads)])?;
        // Release this handle so the backend may rotate the storage in place.
        drop(self);
        backend_for(Op::Rope, &x)?.rope(x, positions, inv_freq, mscale, style)
    }

    /// Rows `ids` of a rank-2 table (embedding lookup): `(n_ids, cols)`. Ids are checked on the
    /// host before any device sees them.
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let (rows, cols) = self.dims2("gather_rows")?;
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::Index {
                op: "gather_rows",
                index: id as usize,
                size: rows,
            });
        }
        if ids.is_empty() {
            return Tensor::zeros_on([0, cols], self.dtype(), self.device());
        }
        let ids = Tensor::from_u32(ids.to_vec(), [ids.len()])?.to_device(self.device())?;
        backend_for(Op::Gather, self)?.gather(self, &ids)
    }

    /// Weighted sums of rows, `(ids.len() / k, cols)`: row `i` is `Σ_j weights[i·k + j] ·
    /// self[ids[i·k + j]]`, accumulated in f32 in the order given. A mixture-of-experts layer
    /// combines its experts' outputs with it: `self` holds every expert's rows for the step,
    /// `ids`/`weights` each token's `k` rows and routing weights. Ids are checked on the host.
    pub fn combine_rows(&self, ids: &[u32], weights: &[f32], k: usize) -> Result<Tensor> {
        let (rows, cols) = self.dims2("combine_rows")?;
        if k == 0 || ids.len() != weights.len() || !ids.len().is_multiple_of(k) {
            return Err(Error::Invalid {
                op: "combine_rows",
                reason: format!(
                    "{} ids and {} weights do not make rows of {k}",
                    ids.len(),
                    weights.len()
                ),
            });
        }
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::Index {
                op: "combine_rows",
                index: id as usize,
                size: rows,
            });
        }
        let b = backend_for(Op::CombineRows, self)?;
        if ids.is_empty() {
            return Tensor::zeros_on([0, cols], self.dtype(), self.device());
        }
        let n = ids.len();
        let dev = self.device();
        let ids = Tensor::from_u32(ids.to_vec(), [n])?.to_device(dev)?;
        let weights = Tensor::from_vec(weights.to_vec(), [n])?.to_device(dev)?;
        b.combine_rows(self, &ids, &weights, k)
    }

    /// Attention of `args.q` over `args.k`/`args.v` (see [`crate::attn`]): `(n_tokens, n_heads
    /// · head_dim)`.
    pub fn attention(args: &AttnArgs) -> Result<Tensor> {
        args.check()?;
        for t in [args.k, args.v, &args.meta.tok_seq, &args.meta.block_tables] {
            same_device("attention", args.q, t)?;
        }
        backend_for(Op::Attention, args.q)?.attention(args)
    }

    /// Writes `k`, `v` rows into the paged caches `kc`, `vc` at `slots` (see
    /// [`Backend::kv_write`](crate::backend)).
    pub fn kv_write(
        k: &Tensor,
        v: &Tensor,
        kc: &mut Tensor,
        vc: &mut Tensor,
        slots: &Tensor,
    ) -> Result<()> {
        for t in [v, &*kc, &*vc, slots] {
            same_device("kv_write", k, t)?;
        }
        if kc.dtype() != k.dtype() || vc.dtype() != v.dtype() {
            return Err(Error::DType {
                op: "kv_write (cache and rows differ)",
                dtype: k.dtype(),
            });
        }
        backend_for(Op::KvWrite, k)?.kv_write(k, v, kc, vc, slots)
    }

    /// A fresh copy of the elements (contiguous), never sharing storage with `self`: what a
    /// caller that writes in place (`kv_write`) clones with.
    /// `parts` stacked along dim 0: same dtype, device and trailing dims; at least one part.
    pub fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
        let Some(first) = parts.first() else {
            return Err(Error::Invalid {
                op: "cat_rows",
                reason: "no tensors to stack".into(),
            });
        };
        for p in parts {
            same_device("cat_rows", first, p)?;
            if p.rank() == 0 || p.dims()[1..] != first.dims()[1..] || p.dtype() != first.dtype() {
                return Err(Error::ShapeMismatch {
                    op: "cat_rows",
                    lhs: first.dims().to_vec(),
                    rhs: p.dims().to_vec(),
                });
            }
        }
        backend_for(Op::Copy, first)?.cat_rows(parts)
    }

    pub fn deep_copy(&self) -> Result<Tensor> {
        backend_for(Op::Copy, self)?.copy(self)
    }

    /// Casts on the tensor's own device.
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        self.to_dtype(dtype)
    }
}
