//! The CUDA backend: each op launches one embedded kernel (or a cuBLASLt matmul) on the
//! device's stream. Kernel names are `<op>_<dtype>` (`rms_norm_bf16`); arguments follow the
//! signatures in `kernels/*.cu`. Views are made contiguous before a kernel reads them, except
//! the transposed weight of a matmul, which cuBLASLt reads in place.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::blas::{gemm, Gemm};
use super::context::{cuda_err, CudaDev};
use super::storage::CudaStorage;
use crate::attn::AttnArgs;
use crate::backend::Backend;
use crate::op::{BinaryOp, NormOp, Op, RopeStyle, UnaryOp};
use crate::{DType, Error, Layout, QuantType, Result, Storage, Tensor};

pub(crate) struct CudaBackend;

/// The most tokens the quantized GEMV kernel takes (`KILN_QGEMV_MAX_TOK` in quant.cu).
const QGEMV_MAX_TOKENS: usize = 8;

/// `KILN_CUDA_QGEMV=0` sends decode steps through dequantize + cuBLASLt too (for benchmarks
/// and bisecting, as `KILN_QUANT_ISA` caps the CPU kernels).
fn qgemv_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_CUDA_QGEMV").map_or(true, |v| v != "0"))
}

/// A kernel argument, owned until the launch.
enum Arg {
    P(u64),
    I(i32),
    L(i64),
    F(f32),
    S(Strides),
}

/// Mirrors `struct Strides` in `elementwise.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Strides {
    rank: i32,
    dims: [i64; 6],
    strides: [i64; 6],
}

// SAFETY: plain-old-data with the same C layout as the kernel's struct.
unsafe impl DeviceRepr for Strides {}

fn suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::U32 => "u32",
        DType::Quant(q) => match q {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q5_1 => "q5_1",
            QuantType::Q4_K => "q4_k",
            QuantType::Q6_K => "q6_k",
        },
    }
}

fn cuda_of(t: &Tensor) -> Result<&CudaStorage> {
    match &*t.storage {
        Storage::Cuda(s) => Ok(s),
        Storage::Cpu(_) => Err(Error::DeviceMismatch {
            op: "cuda kernel",
            lhs: t.device(),
            rhs: crate::Device::Cuda(0),
        }),
    }
}

/// A contiguous version of `t` and the device address of its first element.
fn contiguous_ptr(t: &Tensor) -> Result<(Tensor, u64)> {
    let c = t.try_contiguous()?;
    let p = cuda_of(&c)?.ptr_at(c.layout.offset);
    Ok((c, p))
}

fn new_like(dev: &'static CudaDev, dtype: DType, dims: &[usize]) -> Result<(Tensor, u64)> {
    let n = dims.iter().product();
    let s = CudaStorage::alloc(dev, dtype, n)?;
    let p = s.ptr();
    Ok((
        Tensor::from_storage(Storage::Cuda(s), dims.to_vec().into())?,
        p,
    ))
}

fn launch(
    dev: &CudaDev,
    module: &'static str,
    name: &str,
    cfg: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    let f = dev.function(module, name)?;
    dev.bind()?;
    let mut b = dev.stream.launch_builder(&f);
    for a in args {
        match a {
            Arg::P(v) => b.arg(v),
            Arg::I(v) => b.arg(v),
            Arg::L(v) => b.arg(v),
            Arg::F(v) => b.arg(v),
            Arg::S(v) => b.arg(v),
        };
    }
    // SAFETY: the argument list matches the kernel's signature (names and order from
    // kernels/*.cu); every pointer addresses a live buffer of the size the kernel reads.
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(&format!("launch of {module}/{name}"), e))?;
    Ok(())
}

/// A grid-stride 1-D launch over `n` elements.
fn flat(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_len(op: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Invalid {
        op,
        reason: format!("{n} elements exceed the kernels' 2^31 limit"),
    })
}

impl CudaBackend {
    /// Rows of the quantized matrix `w` decoded to `dtype`: rows `ids` (u32 on the device), or
    /// all of them (`quant.cu`).
    fn dequant(&self, w: &Tensor, ids: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
        let (rows, cols) = w.dims2("dequantize")?;
        let s = cuda_of(w)?;
        let (_ids, pi, n_rows) = match ids {
            Some(t) => {
                let (c, p) = contiguous_ptr(t)?;
                let n = c.elem_count();
                (Some(c), p, n)
            }
            None => (None, 0, rows),
        };
        let (out, po) = new_like(s.dev, dtype, &[n_rows, cols])?;
        if n_rows * cols > 0 {
            check_len("dequantize", n_rows * cols)?;
            let name = format!("dequant_{}_{}", suffix(w.dtype()), suffix(dtype));
            launch(
                s.dev,
                "quant",
                &name,
                flat(n_rows * cols),
                &[
                    Arg::P(s.ptr_at(w.layout.offset)),
                    Arg::P(pi),
                    Arg::P(po),
                    Arg::I(n_rows as i32),
                    Arg::I(cols as i32),
                ],
            )?;
        }
        Ok(out)
    }

    fn strided_copy(&self, x: &Tensor) -> Result<Tensor> {
        let s = cuda_of(x)?;
        let l: &Layout = x.layout();
        if l.shape.rank() > 6 {
            return Err(Error::Invalid {
                op: "copy",
                reason: format!("rank {} > 6", l.shape.rank()),
            });
        }
        let mut st = Strides {
            rank: l.shape.rank() as i32,
            dims: [1; 6],
            strides: [0; 6],
        };
        for (i, (&d, &s)) in l.shape.dims().iter().zip(&l.strides).enumerate() {
            st.dims[i] = d as i64;
            st.strides[i] = s as i64;
        }
        let n = x.elem_count();
        let (out, po) = new_like(s.dev, x.dtype(), x.dims())?;
        if n > 0 {
            let name = format!("copy_strided_{}", suffix(x.dtype()));
            launch(
                s.dev,
                "elementwise",
                &name,
                flat(n),
                &[
                    Arg::P(s.ptr_at(l.offset)),
                    Arg::P(po),
                    Arg::I(check_len("copy", n)?),
                    Arg::S(st),
                ],
            )?;
        }
        Ok(out)
    }
}

impl Backend for CudaBackend {
    fn supports(&self, op: Op, dtype: DType) -> bool {
        // Block formats: a dequantizing kernel (quant.cu) before cuBLASLt or for lookups; the
        // fused quantized GEMV kernels are the next GPU issue's.
        match (op, dtype) {
            (Op::Copy, _) => true,
            (Op::QMatmul | Op::Gather, DType::Quant(_)) => true,
            (Op::Cast(to), DType::Quant(_)) => to.is_float(),
            (Op::Cast(to), _) => {
                dtype == to
                    || matches!(
                        (dtype, to),
                        (DType::F32, DType::BF16 | DType::F16)
                            | (DType::BF16 | DType::F16, DType::F32)
                    )
            }
            (_, d) => d.is_float(),
        }
    }

    fn qmatmul(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        let (n, k) = x.dims2("quantized matmul")?;
        if n == 0 || n > QGEMV_MAX_TOKENS || !qgemv_enabled() {
            // Prefill: dequantize into the activations' dtype, then one cuBLASLt GEMM.
            return ws
                .iter()
                .map(|w| {
                    let dense = self.dequant(w, None, x.dtype())?;
                    self.matmul(x, &dense.transpose(0, 1)?)
                })
                .collect();
        }
        // Decode: the weights are read once, decoded in registers (quant.cu `qgemv`).
        let (_x, px) = contiguous_ptr(x)?;
        ws.iter()
            .map(|w| {
                let (rows, _) = w.dims2("quantized matmul")?;
                let s = cuda_of(w)?;
                let (y, py) = new_like(s.dev, x.dtype(), &[n, rows])?;
                if rows == 0 {
                    return Ok(y);
                }
                check_len("quantized matmul", rows.max(k))?;
                let name = format!("qgemv_{}_{}", suffix(w.dtype()), suffix(x.dtype()));
                let cfg = LaunchConfig {
                    grid_dim: (rows as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch(
                    s.dev,
                    "quant",
                    &name,
                    cfg,
                    &[
                        Arg::P(s.ptr_at(w.layout.offset)),
                        Arg::P(px),
                        Arg::P(py),
                        Arg::I(rows as i32),
                        Arg::I(k as i32),
                        Arg::I(n as i32),
                    ],
                )?;
                Ok(y)
            })
            .collect()
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (m, k) = a.dims2("matmul")?;
        let (k2, n) = b.dims2("matmul")?;
        if k != k2 || a.dtype() != b.dtype() {
            return Err(Error::ShapeMismatch {
                op: "matmul (shapes or dtypes differ)",
                lhs: a.dims().to_vec(),
                rhs: b.dims().to_vec(),
            });
        }
        let (_a, pa) = contiguous_ptr(a)?;
        // B as stored: row-major (k, n), or the transpose view of a row-major (n, k).
        let bl = b.layout();
        let (b_keep, pb, b_trans) = if bl.strides == [1, k] || (n == 1 && bl.strides[0] == 1) {
            let p = cuda_of(b)?.ptr_at(bl.offset);
            (b.clone(), p, true)
        } else {
            let (c, p) = contiguous_ptr(b)?;
            (c, p, false)
        };
        let dev = cuda_of(a)?.dev;
        let (out, pc) = new_like(dev, a.dtype(), &[m, n])?;
        if k == 0 {
            cuda_of(&out)?.memset_zero()?;
            return Ok(out);
        }
        gemm(
            dev,
            &Gemm {
                m,
                n,
                k,
                a: pa,
                b: pb,
                b_trans,
                c: pc,
                dtype: a.dtype(),
            },
        )?;
        drop(b_keep);
        Ok(out)
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        let (_x, px) = contiguous_ptr(x)?;
        let dev = cuda_of(x)?.dev;
        let n = x.elem_count();
        let (out, po) = new_like(dev, x.dtype(), x.dims())?;
        if n > 0 {
            let alpha = if let UnaryOp::Scale(s) = op { s } else { 0.0 };
            let name = format!("unary_{}_{}", op.name(), suffix(x.dtype()));
            launch(
                dev,
                "elementwise",
                &name,
                flat(n),
                &[
                    Arg::P(px),
                    Arg::P(po),
                    Arg::I(check_len("unary", n)?),
                    Arg::F(alpha),
                ],
            )?;
        }
        Ok(out)
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let b = if b.dtype() != a.dtype() {
            b.to_dtype(a.dtype())?
        } else {
            b.clone()
        };
        let (_a, pa) = contiguous_ptr(a)?;
        let (_b, pb) = contiguous_ptr(&b)?;
        let dev = cuda_of(a)?.dev;
        let n = a.elem_count();
        let (out, po) = new_like(dev, a.dtype(), a.dims())?;
        if n > 0 && b.elem_count() > 0 {
            let name = format!("binary_{}_{}", op.name(), suffix(a.dtype()));
            launch(
                dev,
                "elementwise",
                &name,
                flat(n),
                &[
                    Arg::P(pa),
                    Arg::P(pb),
                    Arg::P(po),
                    Arg::I(check_len("binary", n)?),
                    Arg::I(b.elem_count() as i32),
                ],
            )?;
        } else if n > 0 {
            return a.try_contiguous();
        }
        Ok(out)
    }

    fn gated(&self, act: UnaryOp, gate: Tensor, up: &Tensor) -> Result<Tensor> {
        if let UnaryOp::Scale(_) = act {
            return Err(Error::Unsupported {
                op: "gated scale".into(),
                dtype: gate.dtype(),
                device: gate.device(),
            });
        }
        let (_g, pg) = contiguous_ptr(&gate)?;
        let (_u, pu) = contiguous_ptr(up)?;
        let dev = cuda_of(&gate)?.dev;
        let n = gate.elem_count();
        let (out, po) = new_like(dev, gate.dtype(), gate.dims())?;
        if n > 0 {
            let name = format!("gated_{}_{}", act.name(), suffix(gate.dtype()));
            launch(
                dev,
                "elementwise",
                &name,
                flat(n),
                &[
                    Arg::P(pg),
                    Arg::P(pu),
                    Arg::P(po),
                    Arg::I(check_len("gated", n)?),
                ],
            )?;
        }
        Ok(out)
    }

    fn norm(
        &self,
        op: NormOp,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        let dt = x.dtype();
        let (_x, px) = contiguous_ptr(x)?;
        let (_w, pw) = contiguous_ptr(&w.to_dtype(dt)?)?;
        let bias = b.map(|b| b.to_dtype(dt)).transpose()?;
        let pb = match &bias {
            Some(b) => contiguous_ptr(b)?.1,
            None => 0,
        };
        let dev = cuda_of(x)?.dev;
        let cols = *x.dims().last().unwrap_or(&0);
        let rows = x.elem_count().checked_div(cols).unwrap_or(0);
        let (out, po) = new_like(dev, dt, x.dims())?;
        if rows > 0 {
            let (name, args) = match op {
                NormOp::Rms => (
                    format!("rms_norm_{}", suffix(dt)),
                    vec![
                        Arg::P(px),
                        Arg::P(pw),
                        Arg::P(po),
                        Arg::I(cols as i32),
                        Arg::F(eps),
                    ],
                ),
                NormOp::Layer => (
                    format!("layer_norm_{}", suffix(dt)),
                    vec![
                        Arg::P(px),
                        Arg::P(pw),
                        Arg::P(pb),
                        Arg::P(po),
                        Arg::I(cols as i32),
                        Arg::F(eps),
                    ],
                ),
            };
            launch(dev, "norm", &name, rows_cfg(rows), &args)?;
        }
        Ok(out)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let (_x, px) = contiguous_ptr(x)?;
        let dev = cuda_of(x)?.dev;
        let cols = *x.dims().last().unwrap_or(&0);
        let rows = x.elem_count().checked_div(cols).unwrap_or(0);
        let (out, po) = new_like(dev, x.dtype(), x.dims())?;
        if rows > 0 {
            let name = format!("softmax_{}", suffix(x.dtype()));
            launch(
                dev,
                "norm",
                &name,
                rows_cfg(rows),
                &[Arg::P(px), Arg::P(po), Arg::I(cols as i32)],
            )?;
        }
        Ok(out)
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
        let (n, n_heads, head_dim) = (d[0], d[1], d[2]);
        // The kernel rotates in place: work on a private contiguous copy unless `x` is one.
        let mut x = x;
        let x = if x.is_contiguous() && x.is_unique() {
            x
        } else {
            self.strided_copy(&x)?
        };
        let px = cuda_of(&x)?.ptr_at(x.layout.offset);
        let (_p, pp) = contiguous_ptr(positions)?;
        let (_f, pf) = contiguous_ptr(&inv_freq.to_dtype(DType::F32)?)?;
        let half = inv_freq.elem_count();
        if n > 0 && n_heads > 0 && half > 0 {
            let name = format!("rope_{}", suffix(x.dtype()));
            let cfg = LaunchConfig {
                grid_dim: (n as u32, n_heads as u32, 1),
                block_dim: (half.clamp(32, 256) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            launch(
                cuda_of(&x)?.dev,
                "rope",
                &name,
                cfg,
                &[
                    Arg::P(px),
                    Arg::P(pp),
                    Arg::P(pf),
                    Arg::I(n_heads as i32),
                    Arg::I(head_dim as i32),
                    Arg::I(half as i32),
                    Arg::F(mscale),
                    Arg::I((style == RopeStyle::Interleaved) as i32),
                ],
            )?;
        }
        Ok(x)
    }

    fn gather(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        if table.dtype().quant().is_some() {
            return self.dequant(table, Some(ids), DType::F32);
        }
        let (_rows, cols) = table.dims2("gather_rows")?;
        let (_t, pt) = contiguous_ptr(table)?;
        let (_i, pi) = contiguous_ptr(ids)?;
        let dev = cuda_of(table)?.dev;
        let n_ids = ids.elem_count();
        let (out, po) = new_like(dev, table.dtype(), &[n_ids, cols])?;
        if n_ids * cols > 0 {
            check_len("gather", n_ids * cols)?;
            let name = format!("gather_rows_{}", suffix(table.dtype()));
            launch(
                dev,
                "embedding",
                &name,
                flat(n_ids * cols),
                &[
                    Arg::P(pt),
                    Arg::P(pi),
                    Arg::P(po),
                    Arg::I(n_ids as i32),
                    Arg::I(cols as i32),
                ],
            )?;
        }
        Ok(out)
    }

    fn combine_rows(&self, src: &Tensor, ids: &Tensor, w: &Tensor, k: usize) -> Result<Tensor> {
        let (_rows, cols) = src.dims2("combine_rows")?;
        let (_s, ps) = contiguous_ptr(src)?;
        let (_i, pi) = contiguous_ptr(ids)?;
        let (_w, pw) = contiguous_ptr(w)?;
        let dev = cuda_of(src)?.dev;
        let n_out = ids.elem_count() / k.max(1);
        let (out, po) = new_like(dev, src.dtype(), &[n_out, cols])?;
        if n_out * cols > 0 {
            check_len("combine_rows", n_out * cols)?;
            let name = format!("combine_rows_{}", suffix(src.dtype()));
            launch(
                dev,
                "embedding",
                &name,
                flat(n_out * cols),
                &[
                    Arg::P(ps),
                    Arg::P(pi),
                    Arg::P(pw),
                    Arg::P(po),
                    Arg::I(check_len("combine_rows", n_out)?),
                    Arg::I(check_len("combine_rows", k)?),
                    Arg::I(cols as i32),
                ],
            )?;
        }
        Ok(out)
    }

    fn attention(&self, a: &AttnArgs) -> Result<Tensor> {
        let n = a.check()?;
        if a.head_dim > 256 {
            return Err(Error::Unsupported {
                op: format!("attention with head_dim {}", a.head_dim),
                dtype: a.q.dtype(),
                device: a.q.device(),
            });
        }
        let dt = a.q.dtype();
        let (_q, pq) = contiguous_ptr(a.q)?;
        let kc = cuda_of(a.k)?.ptr_at(a.k.layout.offset);
        let vc = cuda_of(a.v)?.ptr_at(a.v.layout.offset);
        if a.k.dtype() != dt || a.v.dtype() != dt {
            return Err(Error::DType {
                op: "attention (q and kv dtypes differ)",
                dtype: a.k.dtype(),
            });
        }
        let m = a.meta;
        let (_s, ps) = contiguous_ptr(&m.tok_seq)?;
        let (_p, pp) = contiguous_ptr(&m.tok_pos)?;
        let (_l, pl) = contiguous_ptr(&m.seq_len)?;
        let (_t, pt) = contiguous_ptr(&m.block_tables)?;
        let max_blocks = *m.block_tables.dims().last().unwrap_or(&1);
        let alibi = a.alibi.map(|t| t.to_dtype(DType::F32)).transpose()?;
        let pa = match &alibi {
            Some(t) => contiguous_ptr(t)?.1,
            None => 0,
        };
        let rel = a
            .rel_bias
            .map(|r| r.values.to_dtype(DType::F32))
            .transpose()?;
        let pr = match &rel {
            Some(t) => contiguous_ptr(t)?.1,
            None => 0,
        };
        let (min_rel, n_rel) = a
            .rel_bias
            .map_or((0, 0), |r| (r.min_rel as i32, r.n_rel as i32));
        let dev = cuda_of(a.q)?.dev;
        let (out, po) = new_like(dev, dt, &[n, a.n_heads * a.head_dim])?;
        if n > 0 && a.n_heads > 0 {
            let l = a.layout;
            let cfg = LaunchConfig {
                grid_dim: (n as u32, a.n_heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let name = format!("attention_{}", suffix(dt));
            launch(
                dev,
                "attention",
                &name,
                cfg,
                &[
                    Arg::P(pq),
                    Arg::P(kc),
                    Arg::P(vc),
                    Arg::P(po),
                    Arg::P(ps),
                    Arg::P(pp),
                    Arg::P(pl),
                    Arg::P(pt),
                    Arg::I(max_blocks as i32),
                    Arg::I(a.n_heads as i32),
                    Arg::I(a.n_kv_heads as i32),
                    Arg::I(a.head_dim as i32),
                    Arg::I(l.block_size.min(i32::MAX as usize) as i32),
                    Arg::L(l.block_stride as i64),
                    Arg::L(l.head_stride as i64),
                    Arg::L(l.row_stride as i64),
                    Arg::F(a.scale),
                    Arg::I(a.causal as i32),
                    Arg::I(a.window.unwrap_or(0) as i32),
                    Arg::P(pa),
                    Arg::P(pr),
                    Arg::I(min_rel),
                    Arg::I(n_rel),
                ],
            )?;
        }
        Ok(out)
    }

    fn kv_write(
        &self,
        k: &Tensor,
        v: &Tensor,
        kc: &mut Tensor,
        vc: &mut Tensor,
        slots: &Tensor,
    ) -> Result<()> {
        let kd = kc.dims().to_vec();
        let [_, n_kv_heads, block_size, head_dim] = kd[..] else {
            return Err(Error::Rank {
                op: "kv_write cache",
                expected: 4,
                got: kd,
            });
        };
        let (_k, pk) = contiguous_ptr(k)?;
        let (_v, pv) = contiguous_ptr(v)?;
        let (_s, psl) = contiguous_ptr(slots)?;
        let pkc = cuda_of(kc)?.ptr_at(kc.layout.offset);
        let pvc = cuda_of(vc)?.ptr_at(vc.layout.offset);
        let n_tokens = slots.elem_count();
        if n_tokens > 0 {
            let name = format!("kv_write_{}", suffix(k.dtype()));
            let dev = cuda_of(k)?.dev;
            launch(
                dev,
                "kv",
                &name,
                flat(n_tokens * n_kv_heads * head_dim),
                &[
                    Arg::P(pk),
                    Arg::P(pv),
                    Arg::P(pkc),
                    Arg::P(pvc),
                    Arg::P(psl),
                    Arg::I(n_tokens as i32),
                    Arg::I(n_kv_heads as i32),
                    Arg::I(head_dim as i32),
                    Arg::I(block_size as i32),
                ],
            )?;
        }
        Ok(())
    }

    fn copy(&self, x: &Tensor) -> Result<Tensor> {
        self.strided_copy(x)
    }

    fn cat_rows(&self, parts: &[Tensor]) -> Result<Tensor> {
        let (dt, dev) = (parts[0].dtype(), cuda_of(&parts[0])?.dev);
        let mut dims = parts[0].dims().to_vec();
        dims[0] = parts.iter().map(|p| p.dims()[0]).sum();
        let (out, po) = new_like(dev, dt, &dims)?;
        let mut at = po;
        dev.bind()?;
        for p in parts {
            let (_c, pp) = contiguous_ptr(p)?;
            let bytes = dt.bytes_for(p.elem_count());
            if bytes > 0 {
                // SAFETY: `pp` holds `bytes` bytes of a live buffer and `at..at + bytes` lies in
                // `out` (the parts' sizes sum to its size); ordered on the device's stream.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(at, pp, bytes, dev.cu_stream())
                }
                .map_err(|e| cuda_err("device-to-device copy", e))?;
            }
            at += bytes as u64;
        }
        Ok(out)
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        if !self.supports(Op::Cast(dtype), x.dtype()) {
            return Err(Error::Unsupported {
                op: Op::Cast(dtype).name(),
                dtype: x.dtype(),
                device: x.device(),
            });
        }
        if x.dtype().quant().is_some() {
            return self.dequant(x, None, dtype);
        }
        let (c, px) = contiguous_ptr(x)?;
        if dtype == x.dtype() {
            return Ok(c);
        }
        let dev = cuda_of(x)?.dev;
        let n = x.elem_count();
        let (out, po) = new_like(dev, dtype, x.dims())?;
        if n > 0 {
            let name = format!("cast_{}_to_{}", suffix(x.dtype()), suffix(dtype));
            launch(
                dev,
                "elementwise",
                &name,
                flat(n),
                &[Arg::P(px), Arg::P(po), Arg::I(check_len("cast", n)?)],
            )?;
        }
        Ok(out)
    }
}
