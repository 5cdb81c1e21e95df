//! The GPTQ and AWQ checkpoint layouts (`gptq_pack`, `awq_pack`) against the fixtures of
//! `tools/make_quant_layout_fixtures.py`, which packs with an independent numpy implementation
//! of the published layouts (`tools/quant_layouts.py`): kiln must read the fixture's integers
//! back and write the fixture's words bit for bit. Then round trips over random shapes,
//! malformed inputs (each must be an error, never a panic), and the GGML fast path.

use std::collections::HashMap;
use std::path::PathBuf;

use half::f16;
use kiln_quant::gptq_pack::{self, GptqTensors, GptqVersion};
use kiln_quant::{awq_pack, to_ggml_blocks, Error, GgmlType, IntMatrix, IntSpec, QMatrix};
use kiln_quant::{awq_pack::AwqTensors, Isa, SharedBytes};
use rand::{rngs::StdRng, Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};

// ------------------------------------------------------------------ fixtures

struct Case {
    name: String,
    meta: HashMap<String, String>,
    m: IntMatrix,
    qweight: Vec<i32>,
    qzeros: Vec<i32>,
    scales: Vec<f16>,
    g_idx: Option<Vec<i32>>,
}

impl Case {
    fn get(&self, k: &str) -> &str {
        &self.meta[k]
    }

    fn version(&self) -> GptqVersion {
        match self.get("version") {
            "1" => GptqVersion::V1,
            _ => GptqVersion::V2,
        }
    }

    fn gptq(&self) -> GptqTensors {
        GptqTensors {
            qweight: self.qweight.clone(),
            qzeros: self.qzeros.clone(),
            scales: self.scales.clone(),
            g_idx: self.g_idx.clone().unwrap_or_default(),
            in_features: self.m.cols,
            out_features: self.m.rows,
        }
    }

    fn awq(&self) -> AwqTensors {
        AwqTensors {
            qweight: self.qweight.clone(),
            qzeros: self.qzeros.clone(),
            scales: self.scales.clone(),
            in_features: self.m.cols,
            out_features: self.m.rows,
        }
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/quant_layouts")
}

fn words<T>(st: &SafeTensors, name: &str, dtype: Dtype, f: fn([u8; 4]) -> T) -> Vec<T> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), dtype, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn load(path: &std::path::Path) -> Case {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta: HashMap<String, String> = header.metadata().as_ref().unwrap()["case"]
        .split(';')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let q_view = st.tensor("q").unwrap();
    let (rows, cols) = (q_view.shape()[0], q_view.shape()[1]);
    let q = q_view.data().to_vec();
    let zeros = st.tensor("zeros").unwrap().data().to_vec();
    let scales = words(&st, "scales", Dtype::F32, f32::from_le_bytes);
    let groups = words(&st, "groups", Dtype::I32, i32::from_le_bytes);
    let packed_scales = st.tensor("packed_scales").unwrap();
    assert_eq!(packed_scales.dtype(), Dtype::F16);
    let g: Option<usize> = meta["group_size"].parse::<i64>().unwrap().try_into().ok();
    let group_len = g.unwrap_or(cols);
    let trivial = groups
        .iter()
        .enumerate()
        .all(|(c, &x)| x as usize == c / group_len);
    let m = IntMatrix {
        rows,
        cols,
        spec: IntSpec {
            bits: meta["bits"].parse().unwrap(),
            group_size: g,
            sym: meta["sym"] == "true",
        },
        q,
        scales,
        zeros,
        g_idx: (!trivial).then(|| groups.iter().map(|&x| x as u32).collect()),
    };
    m.validate().unwrap();
    assert_eq!(trivial, meta["act_order"] == "false", "{path:?}");
    Case {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        qweight: words(&st, "qweight", Dtype::I32, i32::from_le_bytes),
        qzeros: words(&st, "qzeros", Dtype::I32, i32::from_le_bytes),
        scales: packed_scales
            .data()
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect(),
        g_idx: st
            .tensor("packed_g_idx")
            .is_ok()
            .then(|| words(&st, "packed_g_idx", Dtype::I32, i32::from_le_bytes)),
        meta,
        m,
    }
}

fn cases(method: &str) -> Vec<Case> {
    let mut paths: Vec<_> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| load(p))
        .filter(|c| c.get("method") == method)
        .collect()
}

fn bits_of(v: &[f16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn gptq_matches_the_reference_layout() {
    let cases = cases("gptq");
    assert_eq!(cases.len(), 34, "GPTQ fixtures");
    for c in &cases {
        let (m, v) = (&c.m, c.version());
        let got = gptq_pack::unpack(&c.gptq(), m.spec.bits, m.spec.group_size, m.spec.sym, v)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(&got, m, "{}: unpack", c.name);
        let p = gptq_pack::pack(m, v).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(p.qweight, c.qweight, "{}: qweight", c.name);
        assert_eq!(p.qzeros, c.qzeros, "{}: qzeros", c.name);
        assert_eq!(bits_of(&p.scales), bits_of(&c.scales), "{}: scales", c.name);
        assert_eq!(Some(&p.g_idx), c.g_idx.as_ref(), "{}: g_idx", c.name);
        // The same words read with the other zero convention are different zero points
        // (sym ones are caught as such).
        let other = match v {
            GptqVersion::V1 => GptqVersion::V2,
            GptqVersion::V2 => GptqVersion::V1,
        };
        match gptq_pack::unpack(&c.gptq(), m.spec.bits, m.spec.group_size, m.spec.sym, other) {
            Ok(wrong) => assert_ne!(&wrong, m, "{}", c.name),
            Err(e) => assert!(matches!(e, Error::Invalid(_)), "{}: {e}", c.name),
        }
        if m.spec.sym {
            assert!(
                gptq_pack::unpack(&c.gptq(), m.spec.bits, m.spec.group_size, true, other).is_err(),
                "{}: a symmetric layer read with the wrong format",
                c.name
            );
        }
    }
}

#[test]
fn awq_matches_the_reference_layout() {
    let cases = cases("awq");
    assert_eq!(cases.len(), 4, "AWQ fixtures");
    for c in &cases {
        let m = &c.m;
        let (got, p) = match c.get("version") {
            "gemm" => (
                awq_pack::unpack(&c.awq(), m.spec.group_size),
                awq_pack::pack(m),
            ),
            _ => (
                awq_pack::unpack_gemv(&c.awq(), m.spec.group_size),
                awq_pack::pack_gemv(m),
            ),
        };
        assert_eq!(&got.unwrap(), m, "{}: unpack", c.name);
        let p = p.unwrap();
        assert_eq!(p.qweight, c.qweight, "{}: qweight", c.name);
        assert_eq!(p.qzeros, c.qzeros, "{}: qzeros", c.name);
        assert_eq!(bits_of(&p.scales), bits_of(&c.scales), "{}: scales", c.name);
    }
}

#[test]
fn fixture_matrices_take_the_ggml_path_when_they_can() {
    for c in cases("gptq").iter().chain(&cases("awq")) {
        let m = &c.m;
        let g = m.spec.group_len(m.cols);
        let expect = match (m.spec.bits, m.spec.sym) {
            _ if m.g_idx.is_some() || g % 32 != 0 => None,
            (4, true) => Some(GgmlType::Q4_0),
            (4, false) => Some(GgmlType::Q4_1),
            (8, true) => Some(GgmlType::Q8_0),
            _ => None,
        };
        let blocks = to_ggml_blocks(m);
        assert_eq!(blocks.as_ref().map(|b| b.0), expect, "{}", c.name);
        if let Some((ty, bytes)) = blocks {
            let mut w = vec![0f32; m.rows * m.cols];
            kiln_quant::dequantize(ty, &bytes, &mut w).unwrap();
            let want = m.dequantize();
            for (i, (a, b)) in w.iter().zip(&want).enumerate() {
                let p = m.params(i / m.cols, m.group_of(i % m.cols));
                let bound = match ty {
                    GgmlType::Q4_1 => (p.scale * p.zero as f32).abs() * 2f32.powi(-11) + 1e-6,
                    _ => 0.0,
                };
                assert!((a - b).abs() <= bound, "{} [{i}]: {a} vs {b}", c.name);
            }
        }
    }
}

/// Q8_0 from an 8-bit matrix can hold -128 (ggml's quantizer never writes it): every kernel
/// must still agree with the dequantized weights.
#[test]
fn q8_0_blocks_with_minus_128_run_on_every_kernel() {
    let (rows, cols, n_tokens) = (40, 96, 3);
    let mut rng = StdRng::seed_from_u64(7);
    let spec = IntSpec {
        bits: 8,
        group_size: Some(32),
        sym: true,
    };
    let mut m = random_matrix(&mut rng, rows, cols, spec, false, 0);
    m.q.iter_mut().step_by(3).for_each(|q| *q = 0);
    let (ty, bytes) = to_ggml_blocks(&m).unwrap();
    assert_eq!(ty, GgmlType::Q8_0);
    let qm = QMatrix::new(ty, rows, cols, SharedBytes::from_vec(bytes)).unwrap();
    let w = m.dequantize();
    let x: Vec<f32> = (0..n_tokens * cols)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    for isa in Isa::available() {
        let mut out = vec![0f32; n_tokens * rows];
        qm.matmul_isa(isa, &x, n_tokens, &mut out).unwrap();
        for t in 0..n_tokens {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|k| x[t * cols + k] * w[r * cols + k]).sum();
                let scale: f32 = (0..cols)
                    .map(|k| (x[t * cols + k] * w[r * cols + k]).abs())
                    .sum();
                let got = out[t * rows + r];
                assert!(
                    (got - want).abs() <= 0.02 * scale + 1e-4,
                    "{isa:?} [{t}, {r}]: {got} vs {want}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------ round trips

/// A random matrix with f16 scales; `act_order` draws a desc_act-style g_idx; `zero_lo` is the
/// smallest zero point drawn (1 for GPTQ v1).
fn random_matrix(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    spec: IntSpec,
    act_order: bool,
    zero_lo: u32,
) -> IntMatrix {
    let maxq = spec.maxq();
    let g = spec.group_len(cols);
    let n_groups = cols / g;
    let g_idx = act_order.then(|| {
        // g_idx[perm[j]] = j / g for a random permutation.
        let mut perm: Vec<usize> = (0..cols).collect();
        for i in (1..cols).rev() {
            perm.swap(i, rng.gen_range(0..=i));
        }
        let mut g_idx = vec![0u32; cols];
        for (j, &c) in perm.iter().enumerate() {
            g_idx[c] = (j / g) as u32;
        }
        g_idx
    });
    let trivial = g_idx
        .as_ref()
        .is_none_or(|x| x.iter().enumerate().all(|(c, &v)| v as usize == c / g));
    IntMatrix {
        rows,
        cols,
        spec,
        q: (0..rows * cols)
            .map(|_| rng.gen_range(0..=maxq) as u8)
            .collect(),
        scales: (0..rows * n_groups)
            .map(|_| f16::from_f32(rng.gen_range(-0.5..0.5)).to_f32())
            .collect(),
        zeros: (0..rows * n_groups)
            .map(|_| {
                if spec.sym {
                    1 << (spec.bits - 1)
                } else {
                    rng.gen_range(zero_lo..=maxq) as u8
                }
            })
            .collect(),
        g_idx: if trivial { None } else { g_idx },
    }
}

#[test]
fn gptq_round_trips_random_shapes() {
    let mut rng = StdRng::seed_from_u64(1);
    for i in 0..300 {
        let bits = gptq_pack::BITS[i % 4];
        let unit = if bits == 3 { 32 } else { 32 / bits as usize };
        let rows = unit * rng.gen_range(1..=5);
        let group_size = [None, Some(unit), Some(2 * unit), Some(32)][rng.gen_range(0..4)];
        // Every group size drawn is a multiple of `unit`, so `cols` is whole words.
        let cols = group_size.unwrap_or(unit) * rng.gen_range(1..=6);
        let sym = rng.gen_bool(0.3);
        let v = [GptqVersion::V1, GptqVersion::V2][i / 4 % 2];
        let spec = IntSpec {
            bits,
            group_size,
            sym,
        };
        let zero_lo = if v == GptqVersion::V1 { 1 } else { 0 };
        let act_order = rng.gen_bool(0.5);
        let m = random_matrix(&mut rng, rows, cols, spec, act_order, zero_lo);
        let t = gptq_pack::pack(&m, v).unwrap();
        let s = gptq_pack::shapes(bits, cols, rows, group_size).unwrap();
        assert_eq!(t.qweight.len(), s.qweight[0] * s.qweight[1]);
        assert_eq!(t.qzeros.len(), s.qzeros[0] * s.qzeros[1]);
        assert_eq!(t.scales.len(), s.scales[0] * s.scales[1]);
        let back = gptq_pack::unpack(&t, bits, group_size, sym, v).unwrap();
        assert_eq!(
            back, m,
            "case {i}: bits {bits} {rows}x{cols} g {group_size:?}"
        );
    }
}

#[test]
fn awq_round_trips_random_shapes() {
    let mut rng = StdRng::seed_from_u64(2);
    for i in 0..200 {
        let gemv = i % 2 == 1;
        let group_size = [None, Some(32), Some(64), Some(128)][rng.gen_range(0..4)];
        let cols = group_size.unwrap_or(8 * rng.gen_range(1..=40)) * rng.gen_range(1..=4);
        let rows = 8 * rng.gen_range(1..=6);
        if gemv && group_size.is_none() && cols < 128 && ![32, 64].contains(&cols) {
            continue;
        }
        let spec = IntSpec {
            bits: 4,
            group_size,
            sym: false,
        };
        let m = random_matrix(&mut rng, rows, cols, spec, false, 0);
        let back = if gemv {
            awq_pack::unpack_gemv(&awq_pack::pack_gemv(&m).unwrap(), group_size)
        } else {
            awq_pack::unpack(&awq_pack::pack(&m).unwrap(), group_size)
        };
        assert_eq!(
            back.unwrap(),
            m,
            "case {i}: gemv {gemv} {rows}x{cols} g {group_size:?}"
        );
    }
}

// ------------------------------------------------------------------ malformed input

fn gptq_case(bits: u8, v: GptqVersion) -> (IntMatrix, GptqTensors) {
    let spec = IntSpec {
        bits,
        group_size: Some(32),
        sym: false,
    };
    let mut rng = StdRng::seed_from_u64(bits as u64);
    let m = random_matrix(&mut rng, 32, 64, spec, false, 1);
    let t = gptq_pack::pack(&m, v).unwrap();
    (m, t)
}

fn invalid(r: Result<IntMatrix, Error>, needle: &str) {
    match r {
        Err(Error::Invalid(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected Invalid({needle:?}), got {other:?}"),
    }
}

fn size_mismatch(r: Result<IntMatrix, Error>, name: &str) {
    match r {
        Err(Error::SizeMismatch { what, .. }) => assert_eq!(what, name),
        other => panic!("expected a size mismatch of {name}, got {other:?}"),
    }
}

#[test]
fn gptq_malformed_inputs_are_errors() {
    let v = GptqVersion::V2;
    let (_, t) = gptq_case(4, v);
    let un = |t: &GptqTensors| gptq_pack::unpack(t, 4, Some(32), false, v);
    let mut bad = t.clone();
    bad.qweight.pop();
    size_mismatch(un(&bad), "GPTQ qweight");
    let mut bad = t.clone();
    bad.qzeros.push(0);
    size_mismatch(un(&bad), "GPTQ qzeros");
    let mut bad = t.clone();
    bad.scales.truncate(3);
    size_mismatch(un(&bad), "GPTQ scales");
    let mut bad = t.clone();
    bad.g_idx.pop();
    size_mismatch(un(&bad), "GPTQ g_idx");
    let mut bad = t.clone();
    bad.g_idx[5] = 2;
    invalid(un(&bad), "g_idx[5] = 2");
    bad.g_idx[5] = -1;
    invalid(un(&bad), "g_idx[5] = -1");
    // An empty g_idx is the default grouping (checkpoints from before act-order).
    let mut old = t.clone();
    old.g_idx.clear();
    assert_eq!(un(&old).unwrap(), un(&t).unwrap());

    invalid(
        gptq_pack::unpack(&t, 5, Some(32), false, v),
        "2, 3, 4 or 8 bits",
    );
    invalid(
        gptq_pack::unpack(&t, 4, Some(48), false, v),
        "does not divide",
    );
    invalid(
        gptq_pack::unpack(&t, 4, Some(0), false, v),
        "does not divide",
    );
    let mut odd = t.clone();
    odd.in_features = 60;
    invalid(un(&odd), "not a multiple of 32");
    odd.in_features = 0;
    invalid(un(&odd), "needs input and output features");
    let (_, t3) = gptq_case(3, v);
    let mut odd = t3.clone();
    odd.out_features = 24;
    invalid(
        gptq_pack::unpack(&odd, 3, Some(32), false, v),
        "24 output features",
    );
    let mut huge = t.clone();
    huge.in_features = usize::MAX / 2;
    assert!(un(&huge).is_err());

    // v1: a stored field of 15 is the zero point 16, which 4 bits cannot hold.
    let mut v1 = t.clone();
    v1.qzeros[0] |= 0xF;
    invalid(
        gptq_pack::unpack(&v1, 4, Some(32), false, GptqVersion::V1),
        "outside 4 bits",
    );
    // A symmetric layer whose zero points are not 8.
    invalid(
        gptq_pack::unpack(&t, 4, Some(32), true, v),
        "symmetric GPTQ layer",
    );
}

#[test]
fn gptq_pack_refuses_what_the_layout_cannot_hold() {
    let (m, _) = gptq_case(4, GptqVersion::V2);
    let pack = |m: &IntMatrix, v| gptq_pack::pack(m, v).map(|_| ()).unwrap_err().to_string();

    // The v1 quirk: a zero point of 0 would be stored as -1.
    let mut z0 = m.clone();
    z0.zeros[3] = 0;
    let e = pack(&z0, GptqVersion::V1);
    assert!(e.contains("gptq_v2") && e.contains("zero point 0"), "{e}");
    assert!(gptq_pack::pack(&z0, GptqVersion::V2).is_ok());

    let mut big = m.clone();
    big.q[7] = 16;
    assert!(pack(&big, GptqVersion::V2).contains("does not fit in 4 bits"));
    let mut frac = m.clone();
    frac.scales[1] = 0.1;
    assert!(pack(&frac, GptqVersion::V2).contains("not an f16 value"));
    let mut five = m.clone();
    five.spec.bits = 5;
    assert!(pack(&five, GptqVersion::V2).contains("2, 3, 4 or 8 bits"));
    let mut short = m.clone();
    short.zeros.pop();
    assert!(pack(&short, GptqVersion::V2).contains("zero points"));
    let mut bad_g = m.clone();
    bad_g.g_idx = Some(vec![9; m.cols]);
    assert!(pack(&bad_g, GptqVersion::V2).contains("g_idx"));
}

#[test]
fn awq_malformed_inputs_are_errors() {
    let spec = IntSpec {
        bits: 4,
        group_size: Some(32),
        sym: false,
    };
    let mut rng = StdRng::seed_from_u64(3);
    let m = random_matrix(&mut rng, 16, 64, spec, false, 0);
    let t = awq_pack::pack(&m).unwrap();
    let mut bad = t.clone();
    bad.qweight.pop();
    size_mismatch(awq_pack::unpack(&bad, Some(32)), "AWQ qweight");
    let mut bad = t.clone();
    bad.qzeros.pop();
    size_mismatch(awq_pack::unpack(&bad, Some(32)), "AWQ qzeros");
    let mut bad = t.clone();
    bad.scales.push(f16::ONE);
    size_mismatch(awq_pack::unpack(&bad, Some(32)), "AWQ scales");
    let mut bad = t.clone();
    bad.out_features = 12;
    invalid(awq_pack::unpack(&bad, Some(32)), "not a multiple of 8");
    invalid(awq_pack::unpack(&t, Some(48)), "does not divide");
    let g = awq_pack::pack_gemv(&m).unwrap();
    invalid(awq_pack::unpack_gemv(&g, Some(16)), "gemv takes groups");

    let e = |r: Result<AwqTensors, Error>| r.unwrap_err().to_string();
    let three = random_matrix(&mut rng, 16, 64, IntSpec { bits: 3, ..spec }, false, 0);
    assert!(e(awq_pack::pack(&three)).contains("4-bit"));
    let act = random_matrix(&mut rng, 16, 64, spec, true, 0);
    assert!(act.g_idx.is_some());
    assert!(e(awq_pack::pack(&act)).contains("g_idx"));
}

/// Garbage of every size near the right one: unpack answers, it never panics.
#[test]
fn unpack_never_panics_on_garbage() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut ok = 0;
    for _ in 0..2000 {
        let bits = [2u8, 3, 4, 5, 8][rng.gen_range(0..5)];
        let cols = 32 * rng.gen_range(0..4) + [0, 0, 8, 16][rng.gen_range(0..4)];
        let rows = 8 * rng.gen_range(0..5);
        let group_size = [None, Some(0), Some(16), Some(32)][rng.gen_range(0..4)];
        let jitter =
            |n: usize, rng: &mut StdRng| (n as i64 + rng.gen_range(-1..=1)).max(0) as usize;
        let n_groups = group_size.filter(|&g| g > 0).map_or(1, |g| cols / g);
        let words =
            |n: usize, rng: &mut StdRng| (0..n).map(|_| rng.gen::<i32>()).collect::<Vec<_>>();
        let nq = jitter(cols * bits as usize / 32 * rows, &mut rng);
        let nz = jitter(n_groups * rows * bits as usize / 32, &mut rng);
        let ns = jitter(n_groups * rows, &mut rng);
        let t = GptqTensors {
            qweight: words(nq, &mut rng),
            qzeros: words(nz, &mut rng),
            scales: (0..ns).map(|_| f16::from_bits(rng.gen())).collect(),
            g_idx: (0..jitter(cols, &mut rng))
                .map(|_| rng.gen_range(-1..=n_groups as i32))
                .collect(),
            in_features: cols,
            out_features: rows,
        };
        for v in [GptqVersion::V1, GptqVersion::V2] {
            let sym = rng.gen_bool(0.2);
            ok += gptq_pack::unpack(&t, bits, group_size, sym, v).is_ok() as usize;
        }
        let a = AwqTensors {
            qweight: t.qweight.clone(),
            qzeros: t.qzeros.clone(),
            scales: t.scales.clone(),
            in_features: cols,
            out_features: rows,
        };
        ok += awq_pack::unpack(&a, group_size).is_ok() as usize;
        ok += awq_pack::unpack_gemv(&a, group_size).is_ok() as usize;
    }
    // Some draws are well-formed (random words are valid v2 data).
    assert!(ok > 0);
}
