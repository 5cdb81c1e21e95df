//! GPTQ checkpoints as AutoGPTQ and GPTQModel write them: the four tensors of a quantized
//! linear, read into and written from an [`IntMatrix`].
//!
//! Reference: AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py` (`QuantLinear.pack`
//! and its torch dequantization in `forward`), GPTQModel `gptqmodel/nn_modules/qlinear/__init__.py`
//! (`pack_block`, the buffer shapes) and `gptqmodel/utils/model.py`
//! (`convert_gptq_v1_to_v2_format`: the two zero-point conventions).
//!
//! ```text
//!   IntMatrix q: (out, in), out = rows = out_features.  GPTQ stores it transposed, input-major.
//!
//!   {name}.qweight  int32 (in*bits/32, out)   column o: q[o, 0..in] as one bit stream
//!   {name}.qzeros   int32 (n_groups, out*bits/32)   row g: zero[0..out, g] as one bit stream
//!   {name}.scales   f16   (n_groups, out)     scale[o, g] at [g, o]
//!   {name}.g_idx    int32 (in,)               group of input column c (c / group_size unless
//!                                             act-order without static groups permuted it)
//!
//!   A bit stream of n values of `bits` bits: value i occupies stream bits i*bits .. i*bits+bits-1,
//!   low bit first; stream bit b is bit b % 32 of word b / 32 (the word index is the qweight
//!   row, the qzeros column).
//!
//!   bits 2, 4, 8: 32/bits whole values per word, e.g. 4 bits, word k:
//!     bit 31    28 27    24              7     4 3     0
//!       [  v8k+7  |  v8k+6  |   ...   |  v8k+1  |  v8k   ]
//!
//!   bits 3: 32 values in 3 words; values 10 and 21 straddle a word boundary:
//!     word 3m     bits  0..29 = v0 .. v9,   bits 30..31 = v10 bits 0..1
//!     word 3m+1   bit   0     = v10 bit 2,  bits  1..30 = v11 .. v20,  bit 31 = v21 bit 0
//!     word 3m+2   bits  0..1  = v21 bits 1..2,  bits 2..31 = v22 .. v31      (vN = v32m+N)
//!
//!   w[o, c] = scales[g, o] * (q[o, c] - zero[o, g]),  g = g_idx[c]
//!   checkpoint_format "gptq"    (v1): qzeros holds zero - 1 (readers add 1)
//!   checkpoint_format "gptq_v2" (v2): qzeros holds zero
//! ```
//!
//! AutoGPTQ's and GPTQModel's packers spell the 3-bit case out as "10 values, 1 split, 10, 1,
//! 10"; it is exactly the bit stream above, so one routine here serves every width.
//!
//! The v1 quirk: GPTQ-for-LLaMa subtracted 1 from the zero points before packing and every
//! kernel added it back, so a zero point of 0 became -1, which as an unsigned word sets every
//! higher field of its word (AutoGPTQ) or borrows from the next field (GPTQModel's v2 -> v1
//! conversion): it cannot be written. [`pack`] refuses it and asks for v2 ("gptq_v2"), which
//! GPTQModel introduced for this reason. Reading, a stored v1 field of `2^bits - 1` would be
//! the zero point `2^bits`, outside the grid (some kernels wrap it to 0, others do not);
//! [`unpack`] refuses it too.
//!
//! Sizes: the packers work on whole words, so `in * bits` and `out * bits` must be multiples
//! of 32 (for 3 bits: `in` and `out` multiples of 32). Only bits 2, 3, 4 and 8 have this
//! layout (GPTQModel's 5- to 7-bit "planar" layout is not this one).

use half::f16;
use rayon::prelude::*;

use crate::{Error, IntMatrix, IntSpec, Result};

/// The bit widths of this layout.
pub const BITS: [u8; 4] = [2, 3, 4, 8];

/// How the zero points are stored (`quantization_config.checkpoint_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptqVersion {
    /// `"gptq"`: zero points minus one (AutoGPTQ, transformers' default).
    V1,
    /// `"gptq_v2"`: zero points as they are (GPTQModel).
    V2,
}

impl GptqVersion {
    /// From `checkpoint_format`; absent means `"gptq"` (what AutoGPTQ and transformers assume).
    pub fn from_checkpoint_format(format: Option<&str>) -> Result<GptqVersion> {
        match format {
            None | Some("gptq") => Ok(GptqVersion::V1),
            Some("gptq_v2") => Ok(GptqVersion::V2),
            Some(other) => Err(Error::Invalid(format!(
                "GPTQ checkpoint_format {other:?} is not supported (only \"gptq\" and \"gptq_v2\")"
            ))),
        }
    }

    pub fn checkpoint_format(self) -> &'static str {
        match self {
            GptqVersion::V1 => "gptq",
            GptqVersion::V2 => "gptq_v2",
        }
    }

    /// What is added to a stored zero point to get the zero point.
    fn offset(self) -> u32 {
        match self {
            GptqVersion::V1 => 1,
            GptqVersion::V2 => 0,
        }
    }
}

/// The tensors of one quantized linear, row-major in the shapes of [`GptqShapes`].
#[derive(Debug, Clone, PartialEq)]
pub struct GptqTensors {
    pub qweight: Vec<i32>,
    pub qzeros: Vec<i32>,
    pub scales: Vec<f16>,
    /// Empty is read as `c / group_size` (checkpoints written before g_idx existed).
    pub g_idx: Vec<i32>,
    pub in_features: usize,
    pub out_features: usize,
}

/// The shapes of the tensors of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptqShapes {
    pub qweight: [usize; 2],
    pub qzeros: [usize; 2],
    pub scales: [usize; 2],
    pub g_idx: [usize; 1],
}

/// The shapes for a layer, after checking that the layout can hold it.
pub fn shapes(
    bits: u8,
    in_features: usize,
    out_features: usize,
    group_size: Option<usize>,
) -> Result<GptqShapes> {
    if !BITS.contains(&bits) {
        return Err(Error::Invalid(format!(
            "the GPTQ layout takes 2, 3, 4 or 8 bits, not {bits}"
        )));
    }
    if in_features == 0 || out_features == 0 {
        return Err(Error::Invalid(format!(
            "a GPTQ layer needs input and output features, got {in_features} x {out_features}"
        )));
    }
    let b = bits as usize;
    for (what, n) in [("input", in_features), ("output", out_features)] {
        if n.checked_mul(b).is_none_or(|x| !x.is_multiple_of(32)) {
            return Err(Error::Invalid(format!(
                "GPTQ {bits}-bit packs whole 32-bit words: {n} {what} features x {bits} bits \
                 is not a multiple of 32"
            )));
        }
    }
    IntSpec {
        bits,
        group_size,
        sym: false,
    }
    .check(in_features)?;
    let n_groups = in_features / group_size.unwrap_or(in_features);
    Ok(GptqShapes {
        qweight: [in_features * b / 32, out_features],
        qzeros: [n_groups, out_features * b / 32],
        scales: [n_groups, out_features],
        g_idx: [in_features],
    })
}

/// Writes `m` in the GPTQ layout. Errors for widths other than 2/3/4/8, sizes that are not whole
/// words, a scale that is not an f16 value, and (v1) a zero point of 0.
pub fn pack(m: &IntMatrix, v: GptqVersion) -> Result<GptqTensors> {
    m.validate()?;
    let (bits, out, cols) = (m.spec.bits as usize, m.rows, m.cols);
    let s = shapes(m.spec.bits, cols, out, m.spec.group_size)?;
    let n_groups = s.scales[0];
    let scales = f16_scales(&m.scales)?;
    if v == GptqVersion::V1 {
        if let Some(i) = m.zeros.iter().position(|&z| z == 0) {
            return Err(Error::Invalid(format!(
                "GPTQ checkpoint_format \"gptq\" (v1) stores zero points minus one, so the zero \
                 point 0 of output row {} group {} cannot be written; write \"gptq_v2\" \
                 (GptqVersion::V2) instead",
                i / n_groups,
                i % n_groups
            )));
        }
    }

    let mut qweight = vec![0i32; s.qweight[0] * out];
    qweight
        .par_chunks_mut(out)
        .enumerate()
        .for_each(|(k, words)| {
            for (o, w) in words.iter_mut().enumerate() {
                let row = &m.q[o * cols..(o + 1) * cols];
                *w = stream_word(k, bits, cols, |c| row[c] as u32) as i32;
            }
        });

    let offset = v.offset();
    let wpr = s.qzeros[1];
    let mut qzeros = vec![0i32; n_groups * wpr];
    let mut scale_t = vec![f16::ZERO; n_groups * out];
    for g in 0..n_groups {
        for k in 0..wpr {
            let zero = |o: usize| m.zeros[o * n_groups + g] as u32 - offset;
            qzeros[g * wpr + k] = stream_word(k, bits, out, zero) as i32;
        }
        for o in 0..out {
            scale_t[g * out + o] = scales[o * n_groups + g];
        }
    }
    let g_idx = (0..cols).map(|c| m.group_of(c) as i32).collect();
    Ok(GptqTensors {
        qweight,
        qzeros,
        scales: scale_t,
        g_idx,
        in_features: cols,
        out_features: out,
    })
}

/// Reads the GPTQ tensors of a layer (`bits`, `group_size` and `sym` from its
/// `quantization_config`; `group_size` -1 there is `None`). Every size and value is checked:
/// a symmetric layer must have the zero point `2^(bits-1)` everywhere (a v2 file read as v1 shows
/// up here), and `g_idx` must name groups that exist.
pub fn unpack(
    t: &GptqTensors,
    bits: u8,
    group_size: Option<usize>,
    sym: bool,
    v: GptqVersion,
) -> Result<IntMatrix> {
    let (out, cols) = (t.out_features, t.in_features);
    let s = shapes(bits, cols, out, group_size)?;
    let n_groups = s.scales[0];
    check_len("GPTQ qweight", t.qweight.len(), s.qweight)?;
    check_len("GPTQ qzeros", t.qzeros.len(), s.qzeros)?;
    check_len("GPTQ scales", t.scales.len(), s.scales)?;
    let g_idx = read_g_idx(&t.g_idx, cols, group_size.unwrap_or(cols), n_groups)?;
    let b = bits as usize;

    let mut q = vec![0u8; out * cols];
    q.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
        for (c, x) in row.iter_mut().enumerate() {
            *x = stream_value(c, b, |k| t.qweight[k * out + o] as u32) as u8;
        }
    });

    let (maxq, offset) = ((1u32 << bits) - 1, v.offset());
    let wpr = s.qzeros[1];
    let mut zeros = vec![0u8; out * n_groups];
    let mut scales = vec![0f32; out * n_groups];
    for g in 0..n_groups {
        let words = &t.qzeros[g * wpr..(g + 1) * wpr];
        for o in 0..out {
            let z = stream_value(o, b, |k| words[k] as u32) + offset;
            if z > maxq {
                return Err(Error::Invalid(format!(
                    "GPTQ v1 qzeros of group {g}, output {o} stores {maxq}: zero point {z} is \
                     outside {bits} bits (a zero point of 0 written as v1, or a \"gptq_v2\" file \
                     read as \"gptq\")"
                )));
            }
            if sym && z != 1 << (bits - 1) {
                return Err(Error::Invalid(format!(
                    "symmetric GPTQ layer has zero point {z} at group {g}, output {o}, not {} \
                     (is checkpoint_format {:?} right?)",
                    1 << (bits - 1),
                    v.checkpoint_format()
                )));
            }
            zeros[o * n_groups + g] = z as u8;
            scales[o * n_groups + g] = t.scales[g * out + o].to_f32();
        }
    }
    let m = IntMatrix {
        rows: out,
        cols,
        spec: IntSpec {
            bits,
            group_size,
            sym,
        },
        q,
        scales,
        zeros,
        g_idx,
    };
    m.validate()?;
    Ok(m)
}

/// Checks an `(a, b)` tensor's element count.
pub(crate) fn check_len(what: &'static str, got: usize, shape: [usize; 2]) -> Result<()> {
    let expected = shape[0]
        .checked_mul(shape[1])
        .ok_or(Error::Overflow { what })?;
    if got != expected {
        return Err(Error::SizeMismatch {
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// The scales as f16, refusing any that f16 cannot hold exactly (rounding them here would
/// silently change the weights; `IntMatrix::rtn` and the GPTQ/AWQ solvers round them first).
pub(crate) fn f16_scales(scales: &[f32]) -> Result<Vec<f16>> {
    scales
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let h = f16::from_f32(s);
            if h.to_f32() == s {
                Ok(h)
            } else {
                Err(Error::Invalid(format!(
                    "scale {s} (index {i}) is not an f16 value; checkpoints store f16 scales"
                )))
            }
        })
        .collect()
}

/// `None` when `g_idx` is empty or `c / group_len` everywhere, else the checked groups.
fn read_g_idx(
    g_idx: &[i32],
    cols: usize,
    group_len: usize,
    n_groups: usize,
) -> Result<Option<Vec<u32>>> {
    if g_idx.is_empty() {
        return Ok(None);
    }
    if g_idx.len() != cols {
        return Err(Error::SizeMismatch {
            what: "GPTQ g_idx",
            expected: cols,
            got: g_idx.len(),
        });
    }
    if let Some((c, &g)) = g_idx
        .iter()
        .enumerate()
        .find(|&(_, &g)| g < 0 || g as usize >= n_groups)
    {
        return Err(Error::Invalid(format!(
            "GPTQ g_idx[{c}] = {g} is not one of the {n_groups} groups"
        )));
    }
    let trivial = g_idx
        .iter()
        .enumerate()
        .all(|(c, &g)| g as usize == c / group_len);
    Ok((!trivial).then(|| g_idx.iter().map(|&g| g as u32).collect()))
}

/// Word `k` of the bit stream of `n` values of `bits` bits (value `i` at stream bits
/// `i*bits ..`, low bit first), reading the values through `val`.
#[inline]
pub(crate) fn stream_word(k: usize, bits: usize, n: usize, val: impl Fn(usize) -> u32) -> u32 {
    let lo = 32 * k;
    let end = (lo + 32).div_ceil(bits).min(n);
    let mut w = 0u32;
    for i in lo / bits..end {
        let (p, v) = (i * bits, val(i) as u64);
        // A value that starts in the previous word gives its high bits; one that runs past
        // this word gives its low bits (the truncation to u32 drops the rest).
        w |= (if p >= lo {
            v << (p - lo)
        } else {
            v >> (lo - p)
        }) as u32;
    }
    w
}

/// Value `i` of a bit stream of `bits`-bit values whose words are read through `word`.
#[inline]
pub(crate) fn stream_value(i: usize, bits: usize, word: impl Fn(usize) -> u32) -> u32 {
    let p = i * bits;
    let (k, shift) = (p / 32, p % 32);
    let mut v = word(k) as u64 >> shift;
    if shift + bits > 32 {
        v |= (word(k + 1) as u64) << (32 - shift);
    }
    v as u32 & ((1u32 << bits) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bit_stream_is_the_published_10_1_10_1_10_split() {
        // 32 values 0..8 cycling, packed by the stream and by the spelled-out scheme.
        let v: Vec<u32> = (0..32).map(|i| (i * 5 + 3) % 8).collect();
        let mut want = [0u32; 3];
        for j in 0..10 {
            want[0] |= v[j] << (3 * j);
            want[1] |= v[11 + j] << (3 * j + 1);
            want[2] |= v[22 + j] << (3 * j + 2);
        }
        want[0] |= v[10] << 30;
        want[1] |= (v[10] >> 2) & 1;
        want[1] |= v[21] << 31;
        want[2] |= (v[21] >> 1) & 3;
        for (k, &w) in want.iter().enumerate() {
            assert_eq!(stream_word(k, 3, 32, |i| v[i]), w, "word {k}");
        }
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(stream_value(i, 3, |k| want[k]), x, "value {i}");
        }
    }

    #[test]
    fn version_names() {
        assert_eq!(
            GptqVersion::from_checkpoint_format(None).unwrap(),
            GptqVersion::V1
        );
        let v2 = GptqVersion::from_checkpoint_format(Some("gptq_v2")).unwrap();
        assert_eq!(v2.checkpoint_format(), "gptq_v2");
        assert!(GptqVersion::from_checkpoint_format(Some("marlin")).is_err());
    }
}
