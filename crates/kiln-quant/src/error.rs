//! The crate's one error type.

use crate::GgmlType;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown GGML type id {0}")]
    UnknownType(u32),
    #[error("GGML type {} (id {}) is not supported by kiln-quant for {op}", ty.name(), *ty as u32)]
    Unsupported { ty: GgmlType, op: &'static str },
    #[error("{} needs a multiple of {block_size} values per row, got {n_cols}", ty.name())]
    NotBlockMultiple {
        ty: GgmlType,
        n_cols: usize,
        block_size: usize,
    },
    #[error("size mismatch for {what}: expected {expected}, got {got}")]
    SizeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("row {row} out of range for a matrix of {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
    #[error("byte range {offset}..{offset}+{len} is outside a buffer of {owner_len} bytes")]
    BadByteRange {
        offset: usize,
        len: usize,
        owner_len: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("size overflow computing {what}")]
    Overflow { what: &'static str },
}
