//! kiln-gguf: a reader for GGUF model files (versions 2 and 3).
//!
//! Reference: ggml `docs/gguf.md`. `GgufFile::open` memory-maps the file, parses the header
//! (metadata and tensor infos) and validates every tensor against the file, so afterwards
//! `tensor_bytes` cannot fail for a tensor of this file. Tensor data is never copied: a weight
//! can keep the `Arc<Mmap>` plus `TensorInfo::data_offset`/`n_bytes` and borrow its bytes later.
//!
//! Invariants: dims are in GGUF/ggml order (dims[0] is the fastest-varying axis, i.e. the number
//! of columns of a row-major matrix); `TensorInfo::offset` is relative to the aligned data section,
//! `data_offset` is absolute in the file. Bad input (truncation, wrong magic or version, bad UTF-8,
//! absurd counts, unknown types) is an `Error`, never a panic or a huge allocation.

// `u64::is_multiple_of` is newer than the workspace's rust-version (1.80); keep `%`.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

mod parse;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The GGML type table lives in kiln-quant, beside the formats' kernels.
pub use kiln_quant::GgmlType;
pub use memmap2::Mmap;
pub use value::{Value, ValueType};

use value::Getters;

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {found:?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2 and 3; v1 used 32-bit counts, and a huge number means a big-endian file)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated: {what} runs past the end of the file")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: {what} is not valid UTF-8")]
    InvalidUtf8 { path: PathBuf, what: String },
    #[error(
        "{path}: {what} is {count}, more than the remaining {remaining_bytes} bytes could hold"
    )]
    AbsurdCount {
        path: PathBuf,
        what: String,
        count: u64,
        remaining_bytes: u64,
    },
    #[error("{path}: metadata key `{key}` has unknown value type {type_id}")]
    UnknownValueType {
        path: PathBuf,
        key: String,
        type_id: u32,
    },
    #[error("{path}: metadata key `{key}`: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: metadata key `{key}` appears twice")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: tensor `{tensor}` has unknown ggml type {type_id}")]
    UnknownGgmlType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
    },
    #[error("{path}: tensor `{tensor}`: {reason}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: tensor `{tensor}` appears twice")]
    DuplicateTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` (bytes {start}..{end}) is not inside this file")]
    ForeignTensor {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
    },
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("metadata key `{key}` is a {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One tensor's description from the header, already checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: dims[0] is the fastest-varying axis (the number of columns).
    pub dims: Vec<u64>,
    /// The raw ggml type id from the file.
    pub ggml_type: u32,
    /// The same type, decoded (always known for a parsed file).
    pub dtype: GgmlType,
    /// Offset relative to the start of the tensor data section, as stored in the file.
    pub offset: u64,
    /// Absolute offset of the tensor's bytes in the file (and in the mmap).
    pub data_offset: u64,
    /// Size of the tensor's bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims.iter().product()
    }
}

/// An open, memory-mapped, validated GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Memory-maps `path` and parses and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // Mapping an empty file is an error on some platforms; say what is really wrong.
            return Err(Error::Truncated {
                path,
                what: "header".to_string(),
            });
        }
        // SAFETY: the map is read-only. Like every mmap-based model loader (llama.cpp, candle,
        // safetensors) we rely on the file not being truncated or rewritten while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse::parse(&mmap, &path)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            mmap: Arc::new(mmap),
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of every tensor offset (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file, mapped; share it to reference weights without copying.
    pub fn mmap(&self) -> &Arc<Mmap> {
        &self.mmap
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        Getters(&self.metadata).u32(key)
    }

    /// Any integer type whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        Getters(&self.metadata).u64(key)
    }

    /// Any integer type whose value fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        Getters(&self.metadata).i64(key)
    }

    /// f32 or f64 (narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        Getters(&self.metadata).f32(key)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        Getters(&self.metadata).bool(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        Getters(&self.metadata).str(key)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        Getters(&self.metadata).str_array(key)
    }

    /// An array of any integer type whose items fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        Getters(&self.metadata).i32_array(key)
    }

    /// An array of f32 or f64.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        Getters(&self.metadata).f32_array(key)
    }

    /// `general.architecture` ("llama", "qwen2", ...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, borrowed from the mapping.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let end = info.data_offset.checked_add(info.n_bytes);
        end.and_then(|end| {
            self.mmap
                .get(usize::try_from(info.data_offset).ok()?..usize::try_from(end).ok()?)
        })
        .ok_or_else(|| Error::ForeignTensor {
            path: self.path.clone(),
            tensor: info.name.clone(),
            start: info.data_offset,
            end: end.unwrap_or(u64::MAX),
        })
    }
}
