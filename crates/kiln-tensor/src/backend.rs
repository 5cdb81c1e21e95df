//! The one crate-private backend trait: a dozen methods over op enums, implemented by the CPU
//! (`cpu/backend.rs`) and CUDA (`cuda/backend.rs`). `Tensor` methods pick the backend of their
//! operand's storage with an exhaustive `match` ([`of`]); models never see this trait.
//!
//! Contract for every method: operands are on the backend's device (the `Tensor` methods check
//! that before dispatching), results are contiguous, and an op or dtype the backend lacks is an
//! `Error::Unsupported` naming op, dtype and device, never a panic.

use crate::attn::AttnArgs;
use crate::op::{BinaryOp, NormOp, Op, RopeStyle, UnaryOp};
use crate::{DType, Result, Storage, Tensor};

pub(crate) trait Backend {
    fn supports(&self, op: Op, dtype: DType) -> bool;
    /// `a (m, k) · b (k, n)`; `b` may be a transposed view of a `(n, k)` weight.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `x (n, k) · wᵀ` for each quantized `w (m_i, k)` of `ws` (at least one, checked): one
    /// input against several weights (a layer's q/k/v), so the CPU quantizes `x` once.
    fn qmatmul(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>>;
    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor>;
    /// `b` broadcasts when its shape is a suffix of `a`'s (a bias row).
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `act(gate) * up`, written over `gate` when it is unshared.
    fn gated(&self, act: UnaryOp, gate: Tensor, up: &Tensor) -> Result<Tensor>;
    fn norm(
        &self,
        op: NormOp,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor>;
    /// `norm(x + residual)`; backends without a fused kernel add, then normalise.
    #[allow(clippy::too_many_arguments)]
    fn add_norm(
        &self,
        op: NormOp,
        x: Tensor,
        residual: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        let sum = self.binary(BinaryOp::Add, &x, residual)?;
        self.norm(op, &sum, w, b, eps)
    }
    /// Softmax over the last dimension.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;
    /// Rotary embedding of `x (n_tokens, n_heads, head_dim)` at `positions (n_tokens,)` u32.
    fn rope(
        &self,
        x: Tensor,
        positions: &Tensor,
        inv_freq: &Tensor,
        mscale: f32,
        style: RopeStyle,
    ) -> Result<Tensor>;
    /// Rows `ids` (u32) of a rank-2 table; a quantized table's rows are dequantized to f32.
    fn gather(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor>;
    /// `y[i] = Σ_j w[i·k + j] · src[ids[i·k + j]]` for `i < ids.len() / k`: `src (rows, cols)`
    /// float, `ids` u32 (checked < rows), `w` f32 of the same length; f32 accumulation in `j`
    /// order.
    fn combine_rows(&self, src: &Tensor, ids: &Tensor, w: &Tensor, k: usize) -> Result<Tensor>;
    fn attention(&self, a: &AttnArgs) -> Result<Tensor>;
    /// Writes rows of `k`, `v` `(n, n_kv_heads, head_dim)` into paged caches
    /// `(n_blocks, n_kv_heads, block_size, head_dim)` at `slots` (block * block_size + offset).
    fn kv_write(
        &self,
        k: &Tensor,
        v: &Tensor,
        kc: &mut Tensor,
        vc: &mut Tensor,
        slots: &Tensor,
    ) -> Result<()>;
    /// A contiguous copy.
    fn copy(&self, x: &Tensor) -> Result<Tensor>;
    /// `parts` (same dtype, device and trailing dims, at least one) stacked along dim 0.
    fn cat_rows(&self, parts: &[Tensor]) -> Result<Tensor>;
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
}

/// The backend that owns `t`'s storage.
pub(crate) fn of(t: &Tensor) -> &'static dyn Backend {
    match &*t.storage {
        Storage::Cpu(_) => &crate::cpu::backend::CpuBackend,
        Storage::Cuda(s) => s.backend(),
    }
}
