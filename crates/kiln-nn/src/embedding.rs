//! Token embedding lookup over a dense or quantized table (a GGUF Q8_0 table is read row by row,
//! never dequantized whole).

use kiln_tensor::Tensor;

use crate::weights::{Param, Weights};
use crate::{Error, Result};

#[derive(Clone)]
pub struct Embedding {
    table: Param,
    vocab: usize,
    dim: usize,
}

impl Embedding {
    pub fn load(w: &Weights, name: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding {
            table: w.matrix(name, vocab, dim)?,
            vocab,
            dim,
        })
    }

    /// The table itself, for a tied output projection.
    pub fn param(&self) -> &Param {
        &self.table
    }

    /// `(n_tokens,) ids -> (n_tokens, dim)`.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        match &self.table {
            Param::Dense(t) => Ok(t.gather_rows(ids)?),
            Param::Quant(q) => {
                let mut out = vec![0.0f32; ids.len() * self.dim];
                for (row, &id) in out.chunks_mut(self.dim).zip(ids) {
                    if id as usize >= self.vocab {
                        return Err(Error::Tensor(kiln_tensor::Error::Index {
                            op: "embedding",
                            index: id as usize,
                            size: self.vocab,
                        }));
                    }
                    q.dequantize_row(id as usize, row)?;
                }
                Ok(Tensor::from_vec(out, [ids.len(), self.dim])?)
            }
        }
    }
}
