//! Helpers shared by the fixture tests: where fixtures live, reading transformers' reference
//! tensors, and the relative error the acceptance criteria are stated in.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/<name>`; `KILN_FIXTURES` overrides the folder (a test binary run on another
/// machine, scripts/test-gpu.sh).
pub fn fixture_dir(name: &str) -> PathBuf {
    match std::env::var_os("KILN_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name),
    }
}

/// A fixture's `reference.safetensors`.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Reference {
        let path = fixture_dir(name).join("reference.safetensors");
        Reference {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid reference");
        let t = st.tensor(key).unwrap_or_else(|_| panic!("{key}"));
        assert_eq!(t.dtype(), Dtype::F32);
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    pub fn ids(&self, key: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid reference");
        let t = st.tensor(key).unwrap_or_else(|_| panic!("{key}"));
        assert_eq!(t.dtype(), Dtype::I64);
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as u32)
            .collect()
    }
}

/// The first index of the largest value (greedy decoding).
#[allow(dead_code)] // not every fixture test decodes
pub fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

/// `max |got - want| / max |want|`.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// CUDA device 0 for the GPU tests, or `None` with the reason printed (no GPU, or a build
/// without `--features cuda`); with `KILN_REQUIRE_GPU=1` (scripts/test-gpu.sh) that is a failure.
#[allow(dead_code)] // only the device tests call it
pub fn gpu(test: &str) -> Option<kiln_tensor::Device> {
    let required = std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match kiln_tensor::Device::Cuda(0).check() {
        Ok(()) => Some(kiln_tensor::Device::Cuda(0)),
        Err(e) if !required => {
            println!("skipping {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: KILN_REQUIRE_GPU=1 but {e}"),
    }
}
