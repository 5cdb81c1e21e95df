//! [`SharedBytes`]: a cheaply clonable window into bytes owned elsewhere (a `Vec`, an mmap).

use std::sync::Arc;

use crate::{Error, Result};

/// `owner.as_ref()[offset..offset + len]`, shared without copying.
///
/// The loader hands over a memory-mapped file as the owner and one `SharedBytes` per tensor.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    offset: usize,
    len: usize,
}

impl SharedBytes {
    /// A window into `owner`; errors if it does not fit.
    pub fn new(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let owner_len = (*owner).as_ref().len();
        match offset.checked_add(len) {
            Some(end) if end <= owner_len => Ok(Self { owner, offset, len }),
            _ => Err(Error::BadByteRange {
                offset,
                len,
                owner_len,
            }),
        }
    }

    /// Takes ownership of a vector (no copy).
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        Self {
            owner: Arc::new(v),
            offset: 0,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.offset..self.offset + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBytes")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}
