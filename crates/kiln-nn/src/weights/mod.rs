//! Named weights from a checkpoint, addressed with Hugging Face names.
//!
//! `w.pp("model").pp("layers").pp(3).get("q_proj.weight")` reads like the safetensors key.
//! Two sources: safetensors files (memory-mapped, sharded through `model.safetensors.index.json`)
//! and GGUF files, whose llama.cpp names are translated from the HF names by a per-architecture
//! map ([`gguf::hf_to_gguf_name`]). GGUF quantized matrices stay quantized (tensors of a
//! block dtype, [`DType::Quant`]); dense tensors are converted to f32 at load, the CPU
//! backend's compute type.
//!
//! A [`Placement`] (device and compute dtype, [`Weights::placed`]) says where every tensor a
//! layer loads goes. Quantized matrices keep their block format on the CPU in f32 (kiln-quant's
//! kernels) and on CUDA (uploaded as blocks); a CPU placement in f16/bf16 dequantizes them once
//! at load. Dense tensors are stored in the placement's dtype.

mod checkpoint_quant;
mod gguf;
mod safetensors;

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln_tensor::{DType, Device, Tensor};

use crate::load_quant::LoadQuant;
use crate::{Error, Result};

pub(crate) use checkpoint_quant::{matrix_of, read_int};
pub use checkpoint_quant::{CheckpointQuant, QuantMethod};
pub use gguf::{hf_to_gguf_name, GgufSource};
pub use safetensors::SafetensorsSource;

/// Where a model's weights live and the dtype its dense tensors are stored and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
    /// Quantize dense linear weights as they load (`--quantize`, `load_quant.rs`).
    pub quantize: Option<LoadQuant>,
}

impl Default for Placement {
    fn default() -> Placement {
        Placement {
            device: Device::Cpu,
            dtype: DType::F32,
            quantize: None,
        }
    }
}

impl Placement {
    /// The CPU engine's own placement: f32 on the host, quantized matrices kept quantized.
    pub fn is_host_f32(&self) -> bool {
        self.device == Device::Cpu && self.dtype == DType::F32
    }

    /// `t` stored in this placement's dtype on its device (dequantized if it is quantized).
    pub fn tensor(&self, t: Tensor) -> Result<Tensor> {
        if self.is_host_f32() && t.dtype() == DType::F32 {
            return Ok(t);
        }
        if !self.dtype.is_float() {
            return Err(Error::Config(format!(
                "a placement computes in f32, f16 or bf16, not {} (quantized weights keep the \
                 format of their file)",
                self.dtype
            )));
        }
        let t = if t.dtype() == self.dtype {
            t
        } else {
            t.to_dtype(self.dtype)?
        };
        Ok(t.to_device(self.device)?)
    }

    /// A weight matrix in this placement: a quantized one keeps its blocks where the device
    /// has a quantized matmul for them (every block format on the CPU in f32 and on CUDA),
    /// and is dequantized to the placement's dtype elsewhere; a dense one is [`tensor`].
    ///
    /// [`tensor`]: Self::tensor
    pub fn matrix(&self, t: Tensor) -> Result<Tensor> {
        let keeps_blocks = match self.device {
            Device::Cpu => self.dtype == DType::F32,
            Device::Cuda(_) => true,
        };
        if t.dtype().quant().is_some() && keeps_blocks {
            return Ok(t.to_device(self.device)?);
        }
        self.tensor(t)
    }

    /// The weight of the linear `name` (`None`: one built at load, e.g. a split fused
    /// projection) in this placement: quantized first when [`quantize`](Self::quantize) asks
    /// for it, then [`matrix`](Self::matrix).
    pub fn linear(&self, name: Option<&str>, t: Tensor) -> Result<Tensor> {
        self.matrix(crate::load_quant::apply(self.quantize, name, t)?)
    }
}

/// The matrices of a dense `(n, rows, cols)` tensor, each a view of it.
pub(crate) fn split_stacked(t: Tensor) -> Result<Vec<Tensor>> {
    let &[n, rows, cols] = t.dims() else {
        return Err(Error::Config(format!(
            "a stack of matrices has 3 dims, not {:?}",
            t.dims()
        )));
    };
    (0..n)
        .map(|e| Ok(t.narrow(0, e, 1)?.reshape([rows, cols])?))
        .collect()
}

pub(crate) enum Source {
    Safetensors(SafetensorsSource),
    Gguf(GgufSource),
}

impl Source {
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        match self {
            Source::Safetensors(s) => s.get(name),
            Source::Gguf(g) => g.get(name),
        }
    }
    /// A 3-D tensor `(n, rows, cols)` as its `n` matrices.
    fn get_stacked(&self, name: &str) -> Result<Option<Vec<Tensor>>> {
        match self {
            Source::Safetensors(s) => s.get(name)?.map(split_stacked).transpose(),
            Source::Gguf(g) => g.get_stacked(name),
        }
    }
    /// An int32 tensor (a quantized checkpoint's packed words) with its shape.
    fn get_i32(&self, name: &str) -> Result<Option<(Vec<i32>, Vec<usize>)>> {
        match self {
            Source::Safetensors(s) => s.get_i32(name),
            Source::Gguf(_) => Ok(None),
        }
    }
    fn describe(&self) -> String {
        match self {
            Source::Safetensors(s) => s.describe(),
            Source::Gguf(g) => g.describe(),
        }
    }
}

/// A view of a weight source under a name prefix.
#[derive(Clone)]
pub struct Weights {
    source: Arc<Source>,
    prefix: String,
    placement: Placement,
    log: Arc<Mutex<LoadLog>>,
    quant: Option<CheckpointQuant>,
}

/// What a model took from its weights, in order (shared by every view): an export writes
/// exactly these tensors, and quantizes the linears.
#[derive(Default)]
struct LoadLog {
    tensors: Vec<String>,
    linears: Vec<String>,
}

impl Weights {
    /// All `*.safetensors` weights of a Hugging Face model directory (single file or sharded).
    pub fn from_hf_dir(dir: &Path) -> Result<Weights> {
        Ok(Weights::new(Source::Safetensors(
            SafetensorsSource::open_dir(dir)?,
        )))
    }

    pub fn from_safetensors_files(paths: &[std::path::PathBuf]) -> Result<Weights> {
        Ok(Weights::new(Source::Safetensors(SafetensorsSource::open(
            paths,
        )?)))
    }

    /// Weights of a GGUF file, addressed with HF names of the given architecture.
    pub fn from_gguf(file: Arc<kiln_gguf::GgufFile>) -> Result<Weights> {
        Ok(Weights::new(Source::Gguf(GgufSource::new(file)?)))
    }

    fn new(source: Source) -> Weights {
        Weights {
            source: Arc::new(source),
            prefix: String::new(),
            placement: Placement::default(),
            log: Arc::default(),
            quant: None,
        }
    }

    /// The same weights, loaded into `placement` from now on.
    pub fn placed(&self, placement: Placement) -> Weights {
        Weights {
            placement,
            ..self.clone()
        }
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The same weights, whose linears may be stored quantized as `quant` says
    /// (`config.json`'s `quantization_config`).
    pub fn with_checkpoint_quant(&self, quant: Option<CheckpointQuant>) -> Weights {
        Weights {
            quant,
            ..self.clone()
        }
    }

    pub fn checkpoint_quant(&self) -> Option<CheckpointQuant> {
        self.quant
    }

    /// The same weights as they are in the file, on the host in f32 (for loaders that rearrange
    /// a tensor before placing it, `fused.rs`).
    pub fn host(&self) -> Weights {
        self.placed(Placement::default())
    }

    /// True when the weights come from a GGUF file (whose q/k rows llama.cpp permuted for
    /// interleaved rotary pairs).
    pub(crate) fn is_gguf(&self) -> bool {
        matches!(*self.source, Source::Gguf(_))
    }

    /// Descends one level: `pp("layers").pp(0)` → prefix `layers.0.`.
    pub fn pp(&self, part: impl std::fmt::Display) -> Weights {
        Weights {
            source: self.source.clone(),
            prefix: format!("{}{}.", self.prefix, part),
            placement: self.placement,
            log: self.log.clone(),
            quant: self.quant,
        }
    }

    /// The full checkpoint name of `name` under this prefix.
    pub fn name_of(&self, name: &str) -> String {
        self.full(name)
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// Whether the linear `name` is in the checkpoint: `{name}.weight`, or a GPTQ/AWQ
    /// checkpoint's `{name}.qweight`.
    pub fn contains_linear(&self, name: &str) -> bool {
        self.contains(&format!("{name}.weight"))
            || matches!(
                self.source.get_i32(&self.full(&format!("{name}.qweight"))),
                Ok(Some(_))
            )
    }

    pub fn contains(&self, name: &str) -> bool {
        matches!(self.source.get(&self.full(name)), Ok(Some(_)))
    }

    /// The tensor as stored in the file: dense f32, or a quantized matrix.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let full = self.full(name);
        match self.source.get(&full)? {
            Some(t) => {
                self.note(|l| &mut l.tensors, full);
                Ok(t)
            }
            None => Err(Error::MissingTensor {
                name: full,
                source_desc: self.source.describe(),
            }),
        }
    }

    /// The tensor `name` (a full checkpoint name) as stored, without logging it: for an export
    /// reading back what the model loaded.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        self.source.get(name)?.ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            source_desc: self.source.describe(),
        })
    }

    /// Records that the linear `name` (full name, without `.weight`) was loaded by name.
    pub(crate) fn note_linear(&self, name: &str) {
        self.note(|l| &mut l.linears, name.to_string());
    }

    fn note(&self, list: impl FnOnce(&mut LoadLog) -> &mut Vec<String>, name: String) {
        if let Ok(mut log) = self.log.lock() {
            let v = list(&mut log);
            if !v.contains(&name) {
                v.push(name);
            }
        }
    }

    /// Every tensor the model loaded through these weights (any view), in load order.
    pub fn loaded_tensors(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.tensors.clone())
            .unwrap_or_default()
    }

    /// Every linear loaded by name (`model.layers.0.mlp.up_proj`), in load order.
    pub fn loaded_linears(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.linears.clone())
            .unwrap_or_default()
    }

    /// Whether these weights come from a GGUF file.
    pub fn from_gguf_file(&self) -> bool {
        self.is_gguf()
    }

    /// A dense tensor with the expected shape, in the placement.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let p = self.get(name)?;
        let found = p.dims().to_vec();
        // GGUF stores vectors as rank 1 and HF too; accept (n,) for [n] and a matching matrix.
        if found != dims {
            return Err(Error::WrongShape {
                name: self.full(name),
                expected: dims.to_vec(),
                found,
            });
        }
        self.placement.tensor(p)
    }

    /// `n` weight matrices `(rows, cols)` stored as one `(n, rows, cols)` tensor (fused expert
    /// weights: transformers 5's `experts.gate_up_proj`, GGUF's `ffn_*_exps`), as stored in the
    /// file (dense f32 or quantized): the caller places them, as it may split them first.
    pub fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Vec<Tensor>> {
        let full = self.full(name);
        let parts = self
            .source
            .get_stacked(&full)?
            .ok_or_else(|| Error::MissingTensor {
                name: full.clone(),
                source_desc: self.source.describe(),
            })?;
        self.note(|l| &mut l.tensors, full.clone());
        let found: Vec<usize> = match parts.first() {
            Some(p) => [parts.len()]
                .into_iter()
                .chain(p.dims().iter().copied())
                .collect(),
            None => vec![0],
        };
        if found != [n, rows, cols] {
            return Err(Error::WrongShape {
                name: full,
                expected: vec![n, rows, cols],
                found,
            });
        }
        Ok(parts)
    }

    /// A weight matrix (dense or quantized, see [`Placement::matrix`]) of shape (rows, cols).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let p = self.host_matrix(name, rows, cols)?;
        self.placement.matrix(p)
    }

    /// An embedding table `name` (vocab, dim) in the placement, quantized to Q8_0 under
    /// `--quantize int8|int4` (`load_quant.rs`).
    pub fn embedding_table(&self, name: &str, vocab: usize, dim: usize) -> Result<Tensor> {
        let t = self.host_matrix(name, vocab, dim)?;
        let t = crate::load_quant::apply_embedding(self.placement.quantize, t)?;
        self.placement.matrix(t)
    }

    /// The weight `{name}.weight` (rows, cols) of the linear `name` ([`Placement::linear`]).
    pub fn linear_weight(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let p = self.host_matrix(&format!("{name}.weight"), rows, cols)?;
        self.placement.linear(Some(&self.full(name)), p)
    }

    pub(crate) fn host_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let p = self.get(name)?;
        if p.dims() != [rows, cols] {
            return Err(Error::WrongShape {
                name: self.full(name),
                expected: vec![rows, cols],
                found: p.dims().to_vec(),
            });
        }
        Ok(p)
    }
}
