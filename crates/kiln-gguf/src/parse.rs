//! Parser for the GGUF header: magic, version, metadata key/values, tensor infos.
//!
//! Reference: ggml `docs/gguf.md` (v2/v3; little-endian only). Layout:
//! ```text
//! "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count  x { key: string, type: u32, value }          string = len u64 + utf-8 bytes
//! tensor_count x { name: string, n_dims u32, dims u64 x n_dims, ggml_type u32, offset u64 }
//! padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
//! ```
//! Invariants on success: every string is valid UTF-8, keys and tensor names are unique, every
//! tensor's type is known, its row is a whole number of blocks, its offset is aligned and its bytes
//! lie inside the buffer. Nothing is allocated from an on-disk count before checking that the
//! remaining bytes could possibly hold that many items, so a corrupt count fails fast.
//! v1 (u32 counts) is rejected; big-endian files show up as an absurd version and are rejected.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::value::{Value, ValueType};
use crate::{Error, GgmlType, Result, TensorInfo};

pub(crate) const MAGIC: &[u8; 4] = b"GGUF";
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; nothing real nests deeper than 2.
const MAX_NESTING: u32 = 8;

pub(crate) struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: impl Into<String>) -> Error {
        Error::Truncated {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(what()));
        }
        let start = self.pos;
        // n <= remaining <= usize::MAX, so the cast is lossless.
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::InvalidUtf8 {
            path: self.path.to_path_buf(),
            what: what(),
        })
    }

    /// Fails unless `count` items of at least `min_size` bytes each could fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<()> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(Error::AbsurdCount {
                path: self.path.to_path_buf(),
                what: what(),
                count,
                remaining_bytes: self.remaining(),
            });
        }
        Ok(())
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => match u8::from_le_bytes(self.array(&what)?) {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(self.bad_value(key, format!("bool stored as byte {other}"))),
            },
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_NESTING {
                    return Err(
                        self.bad_value(key, format!("arrays nested deeper than {MAX_NESTING}"))
                    );
                }
                let type_id = self.u32(&what)?;
                let elem = ValueType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    type_id,
                })?;
                let count = self.u64(&what)?;
                self.check_count(count, elem.min_encoded_size(), &|| {
                    format!("array length of metadata key `{key}`")
                })?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
        })
    }

    fn bad_value(&self, key: &str, reason: String) -> Error {
        Error::BadValue {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason,
        }
    }
}

fn bad_tensor(path: &Path, tensor: &str, reason: String) -> Error {
    Error::BadTensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    }
}

pub(crate) fn parse(buf: &[u8], path: &Path) -> Result<Header> {
    let mut r = Reader { buf, pos: 0, path };
    let header = || "header".to_string();
    let magic: [u8; 4] = r.array(&header)?;
    if &magic != MAGIC {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let version = r.u32(&header)?;
    if version != 2 && version != 3 {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let tensor_count = r.u64(&header)?;
    let kv_count = r.u64(&header)?;
    // A kv is at least key length (8) + type (4) + a 1-byte value.
    r.check_count(kv_count, 13, &|| "metadata kv count".to_string())?;
    // A tensor info is at least name length (8) + n_dims (4) + type (4) + offset (8).
    r.check_count(tensor_count, 24, &|| "tensor count".to_string())?;

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(&|| format!("key of metadata entry #{i}"))?;
        let type_id = r.u32(&|| format!("type of metadata key `{key}`"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
            path: path.to_path_buf(),
            key: key.clone(),
            type_id,
        })?;
        let value = r.value(ty, &key, 0)?;
        if metadata.contains_key(&key) {
            return Err(Error::DuplicateKey {
                path: path.to_path_buf(),
                key,
            });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_integer() {
            Some(a) if a > 0 && a <= u32::MAX as i128 && (a as u64).is_power_of_two() => a as u64,
            _ => {
                return Err(Error::BadValue {
                    path: path.to_path_buf(),
                    key: "general.alignment".to_string(),
                    reason: format!("{v:?} is not a power-of-two u32"),
                })
            }
        },
    };

    let mut raw = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        raw.push(read_tensor_info(&mut r, i)?);
    }
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;

    let mut seen = HashSet::new();
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, type_id, offset) in raw {
        let info = locate_tensor(
            path,
            buf.len() as u64,
            data_offset,
            alignment,
            name,
            dims,
            type_id,
            offset,
        )?;
        if !seen.insert(info.name.clone()) {
            return Err(Error::DuplicateTensor {
                path: path.to_path_buf(),
                tensor: info.name,
            });
        }
        tensors.push(info);
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn read_tensor_info(r: &mut Reader<'_>, i: u64) -> Result<(String, Vec<u64>, u32, u64)> {
    let name = r.string(&|| format!("name of tensor #{i}"))?;
    let what = || format!("info of tensor `{name}`");
    let n_dims = r.u32(&what)?;
    if n_dims > MAX_DIMS {
        return Err(bad_tensor(
            r.path,
            &name,
            format!("{n_dims} dims (at most {MAX_DIMS})"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.u64(&what)?);
    }
    let type_id = r.u32(&what)?;
    let offset = r.u64(&what)?;
    Ok((name, dims, type_id, offset))
}

#[allow(clippy::too_many_arguments)]
fn locate_tensor(
    path: &Path,
    file_len: u64,
    data_offset: u64,
    alignment: u64,
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
) -> Result<TensorInfo> {
    let dtype = GgmlType::from_u32(type_id).map_err(|_| Error::UnknownGgmlType {
        path: path.to_path_buf(),
        tensor: name.clone(),
        type_id,
    })?;
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            bad_tensor(
                path,
                &name,
                format!("element count of dims {dims:?} overflows"),
            )
        })?;
    let row = dims.first().copied().unwrap_or(1);
    let (block, type_size) = (dtype.block_size() as u64, dtype.type_size() as u64);
    if row % block != 0 {
        return Err(bad_tensor(
            path,
            &name,
            format!(
                "dims[0] = {row} is not a multiple of the {dtype} block size {}",
                dtype.block_size()
            ),
        ));
    }
    let n_bytes = (n_elements % block == 0)
        .then(|| (n_elements / block).checked_mul(type_size))
        .flatten()
        .ok_or_else(|| bad_tensor(path, &name, format!("byte size of dims {dims:?} overflows")))?;
    if offset % alignment != 0 {
        return Err(bad_tensor(
            path,
            &name,
            format!("offset {offset} is not a multiple of the alignment {alignment}"),
        ));
    }
    let start = data_offset.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(n_bytes));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok(TensorInfo {
            name,
            dims,
            ggml_type: type_id,
            dtype,
            offset,
            data_offset: start,
            n_bytes,
        }),
        _ => Err(Error::Truncated {
            path: PathBuf::from(path),
            what: format!(
                "data of tensor `{name}` ({n_bytes} bytes at offset {offset} past data start {data_offset}; file has {file_len} bytes)"
            ),
        }),
    }
}
