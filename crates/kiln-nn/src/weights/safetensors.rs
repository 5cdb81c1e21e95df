//! Safetensors checkpoints: memory-mapped, header validated by the `safetensors` crate (which
//! rejects truncated files), sharded checkpoints resolved through `model.safetensors.index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use kiln_tensor::Tensor;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Start of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

pub struct SafetensorsSource {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsSource {
    /// The safetensors files of a HF directory: the index's shards, or `model.safetensors`, or
    /// every `*.safetensors` file.
    pub fn open_dir(dir: &Path) -> Result<SafetensorsSource> {
        let index = dir.join("model.safetensors.index.json");
        let files = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Safetensors {
                    path: index.display().to_string(),
                    reason: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Safetensors {
                    path: index.display().to_string(),
                    reason: "no `weight_map` object".into(),
                })?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| dir.join(f))
                .collect();
            files.sort();
            files.dedup();
            files
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            files
        };
        if files.is_empty() {
            return Err(Error::Safetensors {
                path: dir.display().to_string(),
                reason: "no .safetensors files".into(),
            });
        }
        SafetensorsSource::open(&files)
    }

    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsSource> {
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
            // SAFETY: the file is opened read-only and kiln never writes model files; as with every
            // mmap loader (llama.cpp, candle) a concurrent truncation by another process is outside
            // what we can guard against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io(path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                    path: path.display().to_string(),
                    reason: format!("{e:?}"),
                })?;
            for (name, info) in meta.tensors() {
                entries.insert(
                    name,
                    Entry {
                        shard: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        range: info.data_offsets,
                    },
                );
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
            });
        }
        Ok(SafetensorsSource { shards, entries })
    }

    pub fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!("{} safetensors shards", many.len()),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// An int32 tensor's values and shape.
    pub fn get_i32(&self, name: &str) -> Result<Option<(Vec<i32>, Vec<usize>)>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        if e.dtype != Dtype::I32 {
            return Err(Error::UnsupportedDType {
                name: name.to_string(),
                dtype: format!("{:?} (expected I32)", e.dtype),
            });
        }
        let shard = &self.shards[e.shard];
        let bytes = &shard.mmap[shard.data_start + e.range.0..shard.data_start + e.range.1];
        let v = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Some((v, e.shape.clone())))
    }

    pub fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[e.shard];
        let bytes = &shard.mmap[shard.data_start + e.range.0..shard.data_start + e.range.1];
        let data: Vec<f32> = match e.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDType {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Some(Tensor::from_vec(data, e.shape.clone())?))
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
