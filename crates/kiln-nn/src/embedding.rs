//! Token embedding lookup over a dense or quantized table (a GGUF Q8_0 table is read row by row,
//! never dequantized whole).

use kiln_tensor::{DType, Tensor};

use crate::weights::Weights;
use crate::Result;

#[derive(Clone)]
pub struct Embedding {
    table: Tensor,
    /// The placement's compute dtype (a quantized table's rows come back in f32).
    dtype: DType,
}

impl Embedding {
    pub fn load(w: &Weights, name: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding {
            table: w.embedding_table(name, vocab, dim)?,
            dtype: w.placement().dtype,
        })
    }

    /// The table itself, for a tied output projection.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// `(n_tokens,) ids -> (n_tokens, dim)`.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let x = self.table.gather_rows(ids)?;
        if x.dtype() == self.dtype {
            return Ok(x);
        }
        Ok(x.to_dtype(self.dtype)?)
    }
}
