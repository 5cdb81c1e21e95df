//! Conformance suite: the CUDA backend held to the CPU backend (the oracle) op by op, as
//! llama.cpp's test-backend-ops does. Each GPU test builds the same random inputs on both
//! devices (a seeded xorshift, so a failure reproduces), runs the op in f32, bf16 and f16 over odd
//! sizes, strided views and empty shapes, and compares by normalised mean squared error
//! `NMSE = Σ(gpu − cpu)² / max(Σ cpu², tiny)` against a per-dtype bound ([`tol`]). Ops that move
//! values or round them once (gather, kv_write, casts, strided copies, relu, scale, add, mul) must
//! agree exactly.
//!
//! Both devices see the same bits: values are made in f32, rounded to the dtype on the host, then
//! uploaded. The CPU computes in f32 from them and returns f32; CUDA returns the input dtype, so
//! the bf16/f16 bounds cover that one output rounding (exact checks round the CPU result first).
//!
//! Without the `cuda` feature or a GPU every GPU test prints `skipping <name>: <reason>` and
//! passes; `KILN_REQUIRE_GPU=1` makes that a failure. The last three tests (attention's two
//! layouts, a closed form, error paths) need no GPU and run everywhere.

use std::sync::OnceLock;

use kiln_tensor::DType::{self, BF16, F16, F32, U32};
use kiln_tensor::{
    AttnArgs, BinaryOp, Device, Error, HostMeta, KvLayout, RelBias, RopeStyle, Tensor, UnaryOp,
};

// ---------------------------------------------------------------------------------------------
// Helpers

const DTYPES: [DType; 3] = [F32, BF16, F16];

/// The NMSE bound for an op's output in `dtype`. Both backends compute in f32 from the same
/// inputs, so what differs is the order of f32 arithmetic, libm ulps and, in bf16/f16, CUDA's
/// rounding of the output (the CPU returns f32):
/// - f32 1e-10: reassociated sums and 1–2 ulp differences of expf/erff/tanhf/sincosf give
///   relative errors ~1e-7, NMSE ~1e-14..1e-12; an element wrong by its own size in 10^4 of
///   similar ones still gives ~1e-4.
/// - bf16 1e-4: rounding to 8 significant bits alone gives NMSE ≈ (2^-7)²/12 · E[1/m²] ≈ 2.5e-6
///   (m the significand in [1, 2)); 1e-4 is ~40x that.
/// - f16 1e-5: 11 significant bits, ≈ 4e-8 from rounding; 1e-5 is ~250x that.
fn tol(dtype: DType) -> f64 {
    match dtype {
        F32 => 1e-10,
        BF16 => 1e-4,
        F16 => 1e-5,
        U32 => 0.0,
    }
}

/// f32 matmul: per element the error grows like √k·u·Σ|a·b| while the result of zero-mean
/// operands is only ~√k·|a·b|, and cuBLASLt may split k (split-K, other blockings) where gemm does
/// not; ~1e-12 at k = 576. 1e-9 keeps a margin and still fails TF32 (10-bit inputs, NMSE ~1e-7).
const MATMUL_F32: f64 = 1e-9;

/// xorshift64* (Vigna 2016): the same stream on every platform, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x5DEE_CE66_D1CE_4E5B).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[-amp, amp)`.
    fn uniform(&mut self, amp: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * amp
    }
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(amp)).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Whether CUDA device 0 can be used, probed once per process.
fn probe() -> Result<Device, String> {
    static PROBE: OnceLock<Result<Device, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !kiln_tensor::cuda::ENABLED {
                return Err("built without the `cuda` feature".into());
            }
            Device::Cuda(0).check().map(|()| Device::Cuda(0)).map_err(|e| e.to_string())
        })
        .clone()
}

/// The GPU for a conformance test, or `None` after printing why the test is skipped (libtest
/// names each test's thread after the test). `KILN_REQUIRE_GPU=1` turns a skip into a failure.
fn gpu() -> Option<Device> {
    let name = std::thread::current().name().unwrap_or("this test").to_string();
    match probe() {
        Ok(dev) => Some(dev),
        Err(why) if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("{name}: KILN_REQUIRE_GPU=1 but no GPU: {why}")
        }
        Err(why) => {
            println!("skipping {name}: {why}");
            None
        }
    }
}

#[track_caller]
fn ok<T>(r: kiln_tensor::Result<T>, what: impl std::fmt::Display) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `data` as a host tensor of `dims` rounded to `dt`, and the same bits on `dev`.
fn pair(data: Vec<f32>, dims: &[usize], dt: DType, dev: Device) -> (Tensor, Tensor) {
    let h = ok(Tensor::from_vec(data, dims.to_vec()).and_then(|t| t.to_dtype(dt)), "host input");
    let g = ok(h.to_device(dev), format_args!("upload of {dims:?} {dt}"));
    (h, g)
}

fn pair_u32(data: Vec<u32>, dev: Device) -> (Tensor, Tensor) {
    let n = data.len();
    let h = ok(Tensor::from_u32(data, [n]), "host u32");
    let g = ok(h.to_device(dev), "upload of u32");
    (h, g)
}

/// How a `(rows, cols)` operand is laid out: contiguous, a transposed `(cols, rows)`, narrowed
/// in both dims of a larger tensor (row stride cols + 3, offset 2), or narrowed rows only
/// (contiguous, at an offset). `Strided` keeps its rows from 0: narrowing an empty range past
/// row 0 and then the columns leaves an offset beyond the storage, which the CPU backend's
/// slicing panics on (a kiln-tensor bug, not what this suite tests).
#[derive(Debug, Clone, Copy, PartialEq)]
enum View {
    Plain,
    Transposed,
    Strided,
    Offset,
}

const VIEWS: [View; 4] = [View::Plain, View::Transposed, View::Strided, View::Offset];

impl View {
    fn base(self, r: usize, c: usize) -> Vec<usize> {
        match self {
            View::Plain => vec![r, c],
            View::Transposed => vec![c, r],
            View::Strided => vec![r + 1, c + 3],
            View::Offset => vec![r + 2, c],
        }
    }
    fn base_len(self, r: usize, c: usize) -> usize {
        self.base(r, c).iter().product()
    }
    fn of(self, t: &Tensor, r: usize, c: usize) -> Tensor {
        let v = match self {
            View::Plain => Ok(t.clone()),
            View::Transposed => t.transpose(0, 1),
            View::Strided => t.narrow(0, 0, r).and_then(|t| t.narrow(1, 2, c)),
            View::Offset => t.narrow(0, 2, r),
        };
        ok(v, format_args!("{self:?} view"))
    }
}

/// `data` (`view.base_len(r, c)` values) as a `(r, c)` view on the host and on `dev`.
fn view_pair(data: Vec<f32>, r: usize, c: usize, dt: DType, view: View, dev: Device) -> (Tensor, Tensor) {
    let (h, g) = pair(data, &view.base(r, c), dt, dev);
    (view.of(&h, r, c), view.of(&g, r, c))
}

/// Random `(r, c)` values in `[-amp, amp)` seen through `view`, on the host and on `dev`.
#[allow(clippy::too_many_arguments)]
fn input2(rng: &mut Rng, r: usize, c: usize, amp: f32, dt: DType, view: View, dev: Device) -> (Tensor, Tensor) {
    let data = rng.vec(view.base_len(r, c), amp);
    view_pair(data, r, c, dt, view, dev)
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    num / den.max(1e-30)
}

/// The first index where `a` and `b` differ (NaN equals NaN; 0 equals -0).
fn first_diff(a: &[f32], b: &[f32]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| match (a.get(i), b.get(i)) {
        (Some(x), Some(y)) => !(x == y || (x.is_nan() && y.is_nan())),
        _ => true,
    })
}

/// The GPU result's and the CPU result's elements, after checking that the GPU result stayed on
/// the GPU, has `dt` and the CPU result's shape.
#[track_caller]
fn fetch(what: &str, dt: DType, cpu: &Tensor, gpu: &Tensor) -> (Vec<f32>, Vec<f32>) {
    assert!(!gpu.device().is_cpu(), "{what} [{dt}]: the GPU result is on the host");
    assert_eq!(gpu.dims(), cpu.dims(), "{what} [{dt}]: GPU vs CPU result shape");
    assert_eq!(gpu.dtype(), dt, "{what} [{dt}]: GPU result dtype");
    (ok(gpu.try_to_vec_f32(), format_args!("{what} [{dt}]: download")), cpu.to_vec_f32())
}

#[track_caller]
fn assert_close(what: &str, dt: DType, bound: f64, cpu: &Tensor, gpu: &Tensor) {
    let (got, want) = fetch(what, dt, cpu, gpu);
    let e = nmse(&got, &want);
    if !(e <= bound) {
        // (fails on NaN too) Name the worst element, NaN first.
        let bad = |i: usize| ((got[i] - want[i]).abs(), got[i].is_nan() != want[i].is_nan());
        let i = (0..got.len()).max_by(|&a, &b| bad(a).partial_cmp(&bad(b)).unwrap_or(std::cmp::Ordering::Less));
        let i = i.unwrap_or(0);
        panic!(
            "{what} [{dt}] shape {:?}: NMSE {e:.3e} > {bound:.0e}; worst element {i}: gpu {} cpu {}",
            cpu.dims(), got[i], want[i]
        );
    }
}

/// Exact agreement, after rounding the CPU's (f32) result to `dt`.
#[track_caller]
fn assert_exact(what: &str, dt: DType, cpu: &Tensor, gpu: &Tensor) {
    let cpu = ok(cpu.to_dtype(dt), "rounding the CPU result");
    let (got, want) = fetch(what, dt, &cpu, gpu);
    if let Some(i) = first_diff(&got, &want) {
        panic!(
            "{what} [{dt}] shape {:?}: element {i} of {} differs: gpu {:?} cpu {:?} (must be exact)",
            cpu.dims(), got.len(), got.get(i), want.get(i)
        );
    }
}

/// `(rows, cols)` of elementwise and row-wise ops: 1, 7, 33, 257, 1000+ wide, and 0 rows.
const SHAPES: [(usize, usize); 8] =
    [(1, 1), (1, 7), (3, 33), (1, 257), (5, 1000), (2, 4099), (37, 96), (0, 7)];

// ---------------------------------------------------------------------------------------------
// Elementwise and row-wise ops

#[test]
fn unary_ops_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(1);
    let ops = [UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::GeluTanh, UnaryOp::Relu, UnaryOp::Tanh, UnaryOp::Scale(0.37)];
    for dt in DTYPES {
        for (r, c) in SHAPES {
            for view in VIEWS {
                let (h, g) = input2(&mut rng, r, c, 4.0, dt, view, dev);
                for op in ops {
                    let what = format!("{op:?} of {view:?} ({r}, {c})");
                    let (want, got) = (ok(h.unary(op), &what), ok(g.unary(op), &what));
                    // relu selects, scale rounds one product: both exact.
                    if matches!(op, UnaryOp::Relu | UnaryOp::Scale(_)) {
                        assert_exact(&what, dt, &want, &got);
                    } else {
                        assert_close(&what, dt, tol(dt), &want, &got);
                    }
                }
            }
        }
    }
    // More elements than one launch's grid (65535 blocks of 256): the grid-stride loop's 2nd lap.
    let n = 65535 * 256 + 1001;
    let (h, g) = pair(rng.vec(n, 4.0), &[n], F32, dev);
    let what = format!("Relu of {n} elements");
    assert_exact(&what, F32, &ok(h.relu(), &what), &ok(g.relu(), &what));
}

#[test]
fn binary_ops_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(2);
    for dt in DTYPES {
        for (r, c) in SHAPES {
            for view in VIEWS {
                let (ah, ag) = input2(&mut rng, r, c, 2.0, dt, view, dev);
                let (bh, bg) = input2(&mut rng, r, c, 2.0, dt, View::Strided, dev);
                // A bias row `(c,)` read from an offset into its storage.
                let (rh, rg) = input2(&mut rng, 1, c, 2.0, dt, View::Offset, dev);
                let (rh, rg) = (ok(rh.reshape([c]), "row"), ok(rg.reshape([c]), "row"));
                for op in [BinaryOp::Add, BinaryOp::Mul] {
                    for (rhs, h2, g2) in [("strided (r, c)", &bh, &bg), ("row (c,)", &rh, &rg)] {
                        let what = format!("{op:?} of {view:?} ({r}, {c}) and {rhs}");
                        let (want, got) = (ok(ah.binary(op, h2), &what), ok(ag.binary(op, g2), &what));
                        assert_exact(&what, dt, &want, &got); // one rounding of u op w
                    }
                }
            }
        }
        // A rank-3 left operand with a rank-2 suffix on the right.
        let (ah, ag) = pair(rng.vec(2 * 3 * 5, 2.0), &[2, 3, 5], dt, dev);
        let (bh, bg) = pair(rng.vec(15, 2.0), &[3, 5], dt, dev);
        let what = "Add of (2, 3, 5) and (3, 5)";
        assert_exact(what, dt, &ok(ah.add(&bh), what), &ok(ag.add(&bg), what));
    }
}

#[test]
fn gated_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(3);
    // Scale is left out: CUDA answers gated Scale with Unsupported (no model uses it).
    let acts = [UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::GeluTanh, UnaryOp::Relu, UnaryOp::Tanh];
    for dt in DTYPES {
        for (r, c) in SHAPES {
            for view in VIEWS {
                let (gh, gg) = input2(&mut rng, r, c, 4.0, dt, view, dev);
                let (uh, ug) = input2(&mut rng, r, c, 2.0, dt, View::Plain, dev);
                for act in acts {
                    let what = format!("gated {act:?} of {view:?} ({r}, {c})");
                    let want = ok(gh.clone().gated(act, &uh), &what);
                    let got = ok(gg.clone().gated(act, &ug), &what);
                    assert_close(&what, dt, tol(dt), &want, &got);
                }
            }
        }
    }
}

#[test]
fn softmax_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(4);
    for dt in DTYPES {
        for (r, c) in SHAPES {
            for view in VIEWS {
                let (h, g) = input2(&mut rng, r, c, 8.0, dt, view, dev);
                let what = format!("softmax of {view:?} ({r}, {c})");
                assert_close(&what, dt, tol(dt), &ok(h.softmax_last(), &what), &ok(g.softmax_last(), &what));
            }
        }
        // Masked scores: every third of row 0 is -inf, row 2 entirely (its result is zeros).
        let (r, c) = (3, 300);
        let mut data = rng.vec(r * c, 8.0);
        data.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0 || *i >= 2 * c).for_each(|(_, x)| *x = f32::NEG_INFINITY);
        let (h, g) = pair(data, &[r, c], dt, dev);
        let what = "masked softmax (3, 300)";
        assert_close(what, dt, tol(dt), &ok(h.softmax_last(), what), &ok(g.softmax_last(), what));
    }
}

#[test]
fn norms_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(5);
    let shapes = [(1, 1), (3, 7), (1, 64), (33, 257), (4, 576), (2, 4099), (0, 64)];
    for dt in DTYPES {
        for (r, c) in shapes {
            let (wh, wg) = pair(rng.vec(c, 0.5).iter().map(|x| 1.0 + x).collect(), &[c], dt, dev);
            let (bh, bg) = pair(rng.vec(c, 1.0), &[c], dt, dev);
            for view in VIEWS {
                let (xh, xg) = input2(&mut rng, r, c, 2.0, dt, view, dev);
                let what = format!("rms_norm of {view:?} ({r}, {c})");
                assert_close(&what, dt, tol(dt), &ok(xh.rms_norm(&wh, 1e-6), &what), &ok(xg.rms_norm(&wg, 1e-6), &what));
                for bias in [true, false] {
                    let what = format!("layer_norm (bias {bias}) of {view:?} ({r}, {c})");
                    let want = ok(xh.layer_norm(&wh, bias.then_some(&bh), 1e-5), &what);
                    let got = ok(xg.layer_norm(&wg, bias.then_some(&bg), 1e-5), &what);
                    assert_close(&what, dt, tol(dt), &want, &got);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matmul

#[test]
fn matmul_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(6);
    let bound = |dt: DType| if dt == F32 { MATMUL_F32 } else { tol(dt) };
    let shapes = [(1, 1, 1), (3, 17, 5), (7, 33, 1), (1, 257, 7), (16, 64, 48), (64, 576, 1536), (0, 16, 8), (4, 0, 6), (5, 16, 0)];
    for dt in DTYPES {
        for (m, k, n) in shapes {
            for va in VIEWS {
                for vb in VIEWS {
                    // Large products: each view on both sides at once, not every pairing.
                    if m * k * n > 1 << 20 && va != vb {
                        continue;
                    }
                    let (ah, ag) = input2(&mut rng, m, k, 1.0, dt, va, dev);
                    let (bh, bg) = input2(&mut rng, k, n, 1.0, dt, vb, dev);
                    let what = format!("matmul {m}x{k}x{n}, a {va:?}, b (k, n) {vb:?}");
                    assert_close(&what, dt, bound(dt), &ok(ah.matmul(&bh), &what), &ok(ag.matmul(&bg), &what));
                    // nn.Linear's weight (n, k), read transposed (cuBLASLt's op T when it can).
                    let (wh, wg) = input2(&mut rng, n, k, 1.0, dt, vb, dev);
                    let what = format!("matmul_t {m}x{k}x{n}, a {va:?}, w (n, k) {vb:?}");
                    assert_close(&what, dt, bound(dt), &ok(ah.matmul_t(&wh), &what), &ok(ag.matmul_t(&wg), &what));
                }
            }
        }
        // An LM head: one row against a (49152, 576) weight, whole and at an offset.
        let (m, k, n) = (1, 576, 49152);
        let (ah, ag) = input2(&mut rng, m, k, 1.0, dt, View::Plain, dev);
        for vb in [View::Plain, View::Offset] {
            let (wh, wg) = input2(&mut rng, n, k, 1.0, dt, vb, dev);
            let what = format!("matmul_t {m}x{k}x{n}, w {vb:?}");
            assert_close(&what, dt, bound(dt), &ok(ah.matmul_t(&wh), &what), &ok(ag.matmul_t(&wg), &what));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rope, gather, casts, copies, kv_write

#[test]
fn rope_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(7);
    // (n_tokens, n_heads, head_dim, rotated dims): full, partial rotary, and no tokens.
    let cases = [(1, 1, 64, 64), (7, 6, 64, 64), (33, 3, 80, 80), (5, 2, 128, 64), (3, 2, 80, 32), (0, 4, 64, 64)];
    for dt in DTYPES {
        for (i, (n, n_heads, head_dim, rot)) in cases.into_iter().enumerate() {
            let mscale = if i % 2 == 0 { 1.0 } else { 1.25 };
            // Positions up to 4095, and one past 100k (large angles need the accurate sincos).
            let pos: Vec<u32> = (0..n).map(|t| if t + 1 == n { 100_003 } else { rng.below(4096) as u32 }).collect();
            let (ph, pg) = pair_u32(pos, dev);
            let inv: Vec<f32> = (0..rot / 2).map(|j| 10_000f32.powf(-2.0 * j as f32 / rot as f32)).collect();
            let (fh, fg) = pair(inv, &[rot / 2], F32, dev);
            for style in [RopeStyle::Half, RopeStyle::Interleaved] {
                for view in VIEWS {
                    let (xh, xg) = input2(&mut rng, n, n_heads * head_dim, 1.0, dt, view, dev);
                    let what = format!("rope {style:?} {n}x{n_heads}x{head_dim} rot {rot} mscale {mscale} of {view:?}");
                    let want = ok(xh.clone().rope(n_heads, &ph, &fh, mscale, style), &what);
                    let got = ok(xg.clone().rope(n_heads, &pg, &fg, mscale, style), &what);
                    assert_close(&what, dt, tol(dt), &want, &got);
                    // The kernel rotates in place: a tensor still shared must be left alone...
                    assert_exact(&format!("{what}: input kept by a clone"), dt, &xh, &xg);
                    // ...and the unshared one gives the same result.
                    let again = ok(xg.rope(n_heads, &pg, &fg, mscale, style), &what);
                    assert_exact(&format!("{what}: unshared input"), dt, &got, &again);
                }
            }
        }
    }
}

#[test]
fn gather_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(8);
    for dt in DTYPES {
        for (vocab, cols) in [(1, 1), (1000, 7), (50, 64), (300, 576)] {
            for view in VIEWS {
                let (th, tg) = input2(&mut rng, vocab, cols, 1.0, dt, view, dev);
                let random: Vec<u32> = (0..257).map(|_| rng.below(vocab) as u32).collect();
                let last = vocab as u32 - 1;
                for ids in [vec![], vec![0], vec![last, 0, last], random] {
                    let what = format!("gather {} ids of {view:?} ({vocab}, {cols})", ids.len());
                    assert_exact(&what, dt, &ok(th.gather_rows(&ids), &what), &ok(tg.gather_rows(&ids), &what));
                }
            }
        }
    }
}

/// Specials, ties and subnormals of bf16/f16, then magnitudes from 2^-30 to 2^20 of both signs.
fn cast_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let specials = [
        0.0, -0.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN_POSITIVE,
        1e-40, 65504.0, 65520.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 512.0, 1.0 + 1.0 / 2048.0, 6e-8, 3e-5,
    ];
    (0..n)
        .map(|i| match specials.get(i) {
            Some(&s) => s,
            None => rng.uniform(1.0) * 2f32.powi(rng.below(51) as i32 - 30),
        })
        .collect()
}

#[test]
fn casts_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(9);
    let (r, c) = (7, 33);
    for view in VIEWS {
        for (from, to) in [(F32, BF16), (F32, F16), (BF16, F32), (F16, F32), (F32, F32), (BF16, BF16), (BF16, F16), (F16, BF16)] {
            let (h, g) = view_pair(cast_values(&mut rng, view.base_len(r, c)), r, c, from, view, dev);
            let what = format!("cast {from} -> {to} of {view:?} ({r}, {c})");
            let want = ok(h.to_dtype(to), &what);
            match g.to_dtype(to) {
                Ok(got) => assert_exact(&what, to, &want, &got),
                // CUDA casts f32 <-> bf16/f16 only; others must be an error, never a panic.
                Err(Error::Unsupported { .. }) => assert!(from != F32 && to != F32, "{what}: unsupported"),
                Err(e) => panic!("{what}: {e}"),
            }
        }
        // Round trips: f32 -> bf16 -> f32 on the GPU equals the host's; bf16 -> f32 -> bf16 is
        // the identity.
        let (h, g) = view_pair(cast_values(&mut rng, view.base_len(r, c)), r, c, F32, view, dev);
        let trip = |t: &Tensor, a: DType, b: DType| ok(t.to_dtype(a).and_then(|t| t.to_dtype(b)), "round trip");
        for d in [BF16, F16] {
            assert_exact(&format!("f32 -> {d} -> f32 of {view:?}"), F32, &trip(&h, d, F32), &trip(&g, d, F32));
            let (hd, gd) = (ok(h.to_dtype(d), "cast"), ok(g.to_dtype(d), "cast"));
            assert_exact(&format!("{d} -> f32 -> {d} of {view:?}"), d, &hd, &trip(&gd, F32, d));
        }
    }
}

type ViewFn = fn(&Tensor) -> kiln_tensor::Result<Tensor>;

#[test]
fn strided_copies_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(10);
    let views: [(&str, ViewFn); 6] = [
        ("transpose(0, 2)", |t| t.transpose(0, 2)),
        ("narrow(2, 1, 4)", |t| t.narrow(2, 1, 4)),
        ("transpose(1, 2).narrow(0, 1, 2)", |t| t.transpose(1, 2)?.narrow(0, 1, 2)),
        ("transpose(0, 1).narrow(2, 3, 3).transpose(1, 2)", |t| t.transpose(0, 1)?.narrow(2, 3, 3)?.transpose(1, 2)),
        ("narrow(0, 3, 1).transpose(0, 2)", |t| t.narrow(0, 3, 1)?.transpose(0, 2)),
        ("narrow(1, 2, 0)", |t| t.narrow(1, 2, 0)),
    ];
    let dims = [4, 5, 6];
    for dt in [F32, BF16, F16, U32] {
        let (h, g) = if dt == U32 {
            let (h, g) = pair_u32((0..120).map(|_| rng.next() as u32).collect(), dev);
            (ok(h.reshape(dims), "u32"), ok(g.reshape(dims), "u32"))
        } else {
            pair(rng.vec(120, 3.0), &dims, dt, dev)
        };
        for (name, f) in views {
            let what = format!("copy of {name} of {dims:?}");
            let (hv, gv) = (ok(f(&h), &what), ok(f(&g), &what));
            let n = hv.elem_count();
            // Down to the host (a device copy first), made contiguous on the device, reshaped.
            let down = ok(gv.to_device(Device::Cpu), &what);
            let on_dev = ok(gv.try_contiguous(), &what);
            let flat = ok(gv.reshape([n]), &what);
            assert_eq!(down.dims(), hv.dims(), "{what} [{dt}]: shape after download");
            if dt == U32 {
                let want = ok(hv.to_vec_u32(), &what);
                for (how, t) in [("download", &down), ("contiguous", &on_dev), ("reshape", &flat)] {
                    assert_eq!(ok(t.to_vec_u32(), &what), want, "{what} [u32] by {how}");
                }
            } else {
                assert_eq!(first_diff(&down.to_vec_f32(), &hv.to_vec_f32()), None, "{what} [{dt}] download");
                assert_exact(&format!("{what} contiguous"), dt, &hv, &on_dev);
                assert_exact(&format!("{what} reshape"), dt, &ok(hv.reshape([n]), &what), &flat);
            }
        }
    }
}

const BLOCK: usize = 16;

#[test]
fn kv_write_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(11);
    // (n_kv_heads, head_dim, n_blocks, n_tokens): scattered, one token, none, every slot.
    for dt in DTYPES {
        for (n_kv, hd, n_blocks, n_tok) in [(2, 64, 8, 37), (1, 80, 3, 1), (4, 128, 5, 0), (2, 16, 4, 64)] {
            for view in [View::Plain, View::Strided] {
                let shape = [n_blocks, n_kv, BLOCK, hd];
                let len = shape.iter().product();
                // Caches start random, so skipped and untouched slots are checked too.
                let (mut kh, mut kg) = pair(rng.vec(len, 1.0), &shape, dt, dev);
                let (mut vh, mut vg) = pair(rng.vec(len, 1.0), &shape, dt, dev);
                let mut slots: Vec<u32> = (0..(n_blocks * BLOCK) as u32).collect();
                rng.shuffle(&mut slots);
                slots.truncate(n_tok);
                slots.iter_mut().step_by(5).for_each(|s| *s = u32::MAX); // -1: padding, skipped
                let (sh, sg) = pair_u32(slots, dev);
                let (rkh, rkg) = input2(&mut rng, n_tok, n_kv * hd, 1.0, dt, view, dev);
                let (rvh, rvg) = input2(&mut rng, n_tok, n_kv * hd, 1.0, dt, view, dev);
                let what = format!("kv_write of {n_tok} {view:?} rows into {shape:?}");
                ok(Tensor::kv_write(&rkh, &rvh, &mut kh, &mut vh, &sh), &what);
                ok(Tensor::kv_write(&rkg, &rvg, &mut kg, &mut vg, &sg), &what);
                assert_exact(&format!("{what}: k cache"), dt, &kh, &kg);
                assert_exact(&format!("{what}: v cache"), dt, &vh, &vg);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// One attention scenario. `seqs` holds each sequence's (keys already cached, new tokens): a
/// prefill is (0, n), a decode (n − 1, 1), a chunk (c, n); the new tokens are the queries.
struct AttnCase {
    what: &'static str,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    seqs: &'static [(usize, usize)],
    causal: bool,
    window: Option<usize>,
    alibi: bool,
    rel: bool,
    /// Keys as packed rows (`KvLayout::rows`, an encoder) instead of paged blocks.
    rows: bool,
}

const fn case(what: &'static str, heads: (usize, usize, usize), seqs: &'static [(usize, usize)]) -> AttnCase {
    let (n_heads, n_kv_heads, head_dim) = heads;
    AttnCase { what, n_heads, n_kv_heads, head_dim, seqs, causal: true, window: None, alibi: false, rel: false, rows: false }
}

const ATTN_CASES: [AttnCase; 9] = [
    case("prefill, GQA 6/2, hd 64", (6, 2, 64), &[(0, 1), (0, 17), (0, 40)]),
    // 300 keys: three tiles of the kernel's online softmax.
    case("decode, GQA 6/2, hd 128", (6, 2, 128), &[(0, 1), (15, 1), (16, 1), (99, 1), (299, 1)]),
    case("chunk + prefill + decode, MHA 4/4, hd 80", (4, 4, 80), &[(20, 5), (0, 33), (63, 1)]),
    AttnCase { window: Some(24), ..case("sliding window 24, released blocks", (6, 2, 64), &[(0, 50), (70, 1), (130, 3)]) },
    AttnCase { alibi: true, ..case("ALiBi, MHA 8/8", (8, 8, 64), &[(0, 20), (40, 1)]) },
    AttnCase { rel: true, ..case("T5 rel bias, causal decoder", (4, 4, 64), &[(0, 9), (12, 1)]) },
    AttnCase { rel: true, causal: false, rows: true, ..case("T5 rel bias, encoder rows", (6, 6, 64), &[(0, 7), (0, 33), (0, 1)]) },
    AttnCase { causal: false, rows: true, ..case("encoder rows, GQA 6/2, hd 80", (6, 2, 80), &[(0, 19), (0, 130)]) },
    case("no tokens", (6, 2, 64), &[]),
];

/// A case's host inputs, shared by both devices.
struct AttnData {
    q: Vec<f32>,
    /// Every sequence's keys and values in turn: `(n_keys, n_kv_heads · head_dim)`.
    kv: [Vec<f32>; 2],
    /// Two kv_write calls (the cached keys, then the new ones plus padding): (row ids, slots).
    writes: [(Vec<usize>, Vec<u32>); 2],
    n_blocks: usize,
    paged: HostMeta,
    rows: HostMeta,
    alibi: Vec<f32>,
    rel: Vec<f32>,
    min_rel: isize,
    n_rel: usize,
}

fn attn_data(rng: &mut Rng, c: &AttnCase) -> AttnData {
    let lens: Vec<usize> = c.seqs.iter().map(|&(past, new)| past + new).collect();
    let n_keys: usize = lens.iter().sum();
    let row = c.n_kv_heads * c.head_dim;
    // Blocks come shuffled from a pool with two spare ones that are never written (zeros).
    let need: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();
    let n_blocks = need.iter().sum::<usize>() + 2;
    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
    rng.shuffle(&mut ids);
    let spare = ids[n_blocks - 1];
    let (mut paged, mut rows) = (HostMeta::default(), HostMeta::default());
    let mut writes: [(Vec<usize>, Vec<u32>); 2] = Default::default();
    let (mut first_row, mut first_block) = (0, 0);
    for (s, (&(past, _), &len)) in c.seqs.iter().zip(&lens).enumerate() {
        let table = ids[first_block..first_block + need[s]].to_vec();
        for j in 0..len {
            let w = &mut writes[(j >= past) as usize];
            w.0.push(first_row + j);
            w.1.push(table[j / BLOCK] * BLOCK as u32 + (j % BLOCK) as u32);
        }
        for meta in [&mut paged, &mut rows] {
            meta.tok_seq.extend(std::iter::repeat_n(s as u32, len - past));
            meta.tok_pos.extend(past as u32..len as u32);
            meta.seq_len.push(len as u32);
        }
        // Blocks wholly before every query's window are released (pointed at a spare block that
        // holds zeros): attention must not read them.
        let lo = c.window.map_or(0, |w| (past + 1).saturating_sub(w));
        paged.tables.push(table.iter().enumerate().map(|(b, &id)| if (b + 1) * BLOCK <= lo { spare } else { id }).collect());
        rows.tables.push(vec![first_row as u32]);
        first_row += len;
        first_block += need[s];
    }
    // Padding rows in the second write (slot -1): skipped.
    if n_keys > 0 {
        writes[1].0.extend([0, 0]);
        writes[1].1.extend([u32::MAX; 2]);
    }
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let n_q = paged.tok_seq.len();
    AttnData {
        q: rng.vec(n_q * c.n_heads * c.head_dim, 3.0),
        kv: [rng.vec(n_keys * row, 1.0), rng.vec(n_keys * row, 1.0)],
        writes,
        n_blocks,
        paged,
        rows,
        alibi: (0..c.n_heads).map(|h| 2f32.powf(-8.0 * (h + 1) as f32 / c.n_heads as f32)).collect(),
        rel: rng.vec(c.n_heads * (2 * max_len + 1), 2.0),
        min_rel: -(max_len as isize),
        n_rel: 2 * max_len + 1,
    }
}

/// Runs a case on `dev` in `dt`: K/V through kv_write into a paged pool (or uploaded as packed
/// rows when `rows`), then one attention call.
fn attend(c: &AttnCase, d: &AttnData, dt: DType, dev: Device, rows: bool) -> kiln_tensor::Result<Tensor> {
    let (n_kv, hd) = (c.n_kv_heads, c.head_dim);
    let up = |v: Vec<f32>, dims: Vec<usize>| Tensor::from_vec(v, dims)?.to_dtype(dt)?.to_device(dev);
    let n_keys = d.kv[0].len() / (n_kv * hd);
    let (k, v, layout, meta) = if rows {
        let k = up(d.kv[0].clone(), vec![n_keys, n_kv, hd])?;
        let v = up(d.kv[1].clone(), vec![n_keys, n_kv, hd])?;
        (k, v, KvLayout::rows(n_kv, hd), &d.rows)
    } else {
        let shape = [d.n_blocks, n_kv, BLOCK, hd];
        let (mut kc, mut vc) = (Tensor::zeros_on(shape, dt, dev)?, Tensor::zeros_on(shape, dt, dev)?);
        for (ids, slots) in &d.writes {
            let pick = |src: &[f32]| ids.iter().flat_map(|&r| src[r * n_kv * hd..][..n_kv * hd].to_vec()).collect();
            let (k, v) = (up(pick(&d.kv[0]), vec![ids.len(), n_kv, hd])?, up(pick(&d.kv[1]), vec![ids.len(), n_kv, hd])?);
            let slots = Tensor::from_u32(slots.clone(), [slots.len()])?.to_device(dev)?;
            Tensor::kv_write(&k, &v, &mut kc, &mut vc, &slots)?;
        }
        (kc, vc, KvLayout::paged(BLOCK, n_kv, hd), &d.paged)
    };
    let q = up(d.q.clone(), vec![d.paged.tok_seq.len(), c.n_heads * hd])?;
    let meta = meta.upload(dev)?;
    // Slopes and biases stay f32 in every dtype (as kiln-nn passes them).
    let alibi = Tensor::from_vec(d.alibi.clone(), [c.n_heads])?.to_device(dev)?;
    let rel = Tensor::from_vec(d.rel.clone(), [c.n_heads, d.n_rel])?.to_device(dev)?;
    Tensor::attention(&AttnArgs {
        q: &q,
        k: &k,
        v: &v,
        layout,
        meta: &meta,
        n_heads: c.n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        causal: c.causal,
        window: c.window,
        alibi: c.alibi.then_some(&alibi),
        rel_bias: c.rel.then_some(RelBias { values: &rel, min_rel: d.min_rel, n_rel: d.n_rel }),
    })
}

#[test]
fn attention_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(12);
    for c in &ATTN_CASES {
        let d = attn_data(&mut rng, c);
        for dt in DTYPES {
            let what = format!("attention: {} {:?}", c.what, c.seqs);
            let want = ok(attend(c, &d, dt, Device::Cpu, c.rows), format_args!("{what} on the CPU"));
            let got = ok(attend(c, &d, dt, dev, c.rows), format_args!("{what} on {dev}"));
            assert_close(&what, dt, tol(dt), &want, &got);
        }
    }
}

/// Runs everywhere: the same keys addressed as packed rows and as shuffled paged blocks give the
/// same attention (causal or not, with every kind of bias).
#[test]
fn attention_rows_and_paged_layouts_agree() {
    let mut rng = Rng::new(13);
    for c in &ATTN_CASES {
        let d = attn_data(&mut rng, c);
        let what = format!("attention: {}", c.what);
        let paged = ok(attend(c, &d, F32, Device::Cpu, false), format_args!("{what}, paged")).to_vec_f32();
        let rows = ok(attend(c, &d, F32, Device::Cpu, true), format_args!("{what}, rows")).to_vec_f32();
        assert_eq!(paged.len(), rows.len(), "{what}");
        let worst = paged.iter().zip(&rows).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1e-6, "{what}: paged and rows layouts differ by {worst}");
    }
}

/// Runs everywhere: one head over two keys against the closed form `softmax(s)·V`.
#[test]
fn attention_two_keys_closed_form() {
    let (q, scale) = ([2.0f32, 0.5], 0.5f32);
    let (k, v) = ([1.0f32, 0.0, 0.0, 1.0], [1.0f32, 2.0, 3.0, -1.0]);
    let (kt, vt) = (ok(Tensor::from_vec(k.to_vec(), [2, 1, 2]), "k"), ok(Tensor::from_vec(v.to_vec(), [2, 1, 2]), "v"));
    let qt = ok(Tensor::from_vec(q.to_vec(), [1, 2]), "q");
    let slope = ok(Tensor::from_vec(vec![0.5], [1]), "slope");
    // (query position, causal, ALiBi) -> scores of the keys it sees.
    let s0 = scale * q[0];
    let s1 = scale * q[1];
    let cases: [(u32, bool, bool, Vec<f32>); 4] = [
        (1, false, false, vec![s0, s1]),
        (1, true, false, vec![s0, s1]),
        (1, false, true, vec![s0 - 0.5, s1]), // key 0 is one position behind the query
        (0, true, false, vec![s0]),           // causal at position 0: key 0 only
    ];
    for (p, causal, alibi, scores) in cases {
        let meta = HostMeta { tok_seq: vec![0], tok_pos: vec![p], seq_len: vec![2], tables: vec![vec![0]] };
        let meta = ok(meta.upload(Device::Cpu), "meta");
        let args = AttnArgs {
            q: &qt, k: &kt, v: &vt, layout: KvLayout::rows(1, 2), meta: &meta,
            n_heads: 1, n_kv_heads: 1, head_dim: 2, scale, causal, window: None,
            alibi: alibi.then_some(&slope), rel_bias: None,
        };
        let got = ok(Tensor::attention(&args), "attention").to_vec_f32();
        let z: f32 = scores.iter().map(|s| s.exp()).sum();
        let want: Vec<f32> = (0..2).map(|d| scores.iter().enumerate().map(|(j, s)| s.exp() / z * v[j * 2 + d]).sum()).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "p {p} causal {causal} alibi {alibi}: {got:?} vs closed form {want:?}");
        }
    }
}

/// Runs everywhere: bad operands are `Err` values naming the problem, never panics.
#[test]
fn errors_are_values_not_panics() {
    let table = ok(Tensor::from_vec((0..12).map(|x| x as f32).collect(), [4, 3]), "table");
    assert!(matches!(table.gather_rows(&[1, 4]), Err(Error::Index { index: 4, size: 4, .. })), "gather of id 4 of 4 rows");

    // Heads that are not a multiple of the kv heads (and no kv heads at all).
    let x = ok(Tensor::from_vec(vec![0.5; 6 * 8], [1, 6 * 8]), "q");
    let kv = ok(Tensor::from_vec(vec![0.5; 4 * 8], [1, 4, 8]), "kv");
    let meta = HostMeta { tok_seq: vec![0], tok_pos: vec![0], seq_len: vec![1], tables: vec![vec![0]] };
    let meta = ok(meta.upload(Device::Cpu), "meta");
    for n_kv_heads in [4, 0] {
        let args = AttnArgs {
            q: &x, k: &kv, v: &kv, layout: KvLayout::rows(4, 8), meta: &meta,
            n_heads: 6, n_kv_heads, head_dim: 8, scale: 1.0, causal: true, window: None,
            alibi: None, rel_bias: None,
        };
        assert!(matches!(Tensor::attention(&args), Err(Error::Invalid { .. })), "6 heads over {n_kv_heads} kv heads");
    }

    // Operands on different devices, where a GPU exists; without one, using CUDA is an error.
    let dev = match probe() {
        Ok(dev) => dev,
        Err(why) => {
            assert!(table.to_device(Device::Cuda(0)).is_err(), "upload without a GPU ({why})");
            assert!(Tensor::zeros_on([2], F32, Device::Cuda(0)).is_err(), "zeros_on without a GPU");
            return;
        }
    };
    let g = ok(table.to_device(dev), "upload");
    let w = ok(Tensor::from_vec(vec![1.0; 3], [3]), "w");
    let mismatch = |what: &str, r: kiln_tensor::Result<Tensor>| {
        assert!(matches!(r, Err(Error::DeviceMismatch { .. })), "{what} across devices: {r:?}");
    };
    mismatch("matmul", table.matmul_t(&g));
    mismatch("add", table.add(&g));
    mismatch("rms_norm", g.rms_norm(&w, 1e-6));
    mismatch("gated", table.clone().gated(UnaryOp::Silu, &g));
    let gkv = ok(kv.to_device(dev), "upload");
    let q = ok(x.narrow(1, 0, 4 * 8), "q");
    let args = AttnArgs {
        q: &q, k: &gkv, v: &gkv, layout: KvLayout::rows(4, 8), meta: &meta,
        n_heads: 4, n_kv_heads: 4, head_dim: 8, scale: 1.0, causal: true, window: None, alibi: None, rel_bias: None,
    };
    mismatch("attention", Tensor::attention(&args));
    let (mut kc, mut vc) = (ok(Tensor::zeros_on([1, 4, BLOCK, 8], F32, dev), "cache"), ok(Tensor::zeros_on([1, 4, BLOCK, 8], F32, dev), "cache"));
    let slots = ok(Tensor::from_u32(vec![0], [1]), "slots");
    let r = Tensor::kv_write(&kv, &kv, &mut kc, &mut vc, &slots);
    assert!(matches!(r, Err(Error::DeviceMismatch { .. })), "kv_write across devices: {r:?}");
}
