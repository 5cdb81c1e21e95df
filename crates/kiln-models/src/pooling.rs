//! Sentence-embedding pooling as sentence-transformers does it: which pooling and whether to
//! L2-normalize comes from the checkpoint's `modules.json` (a `Pooling` module whose directory
//! holds `config.json` with `pooling_mode_*` flags, and optionally a `Normalize` module).
//!
//! Reference: sentence_transformers `models/Pooling.py`, `models/Normalize.py`. Several enabled
//! modes are concatenated in sentence-transformers' order (cls, max, mean, mean_sqrt_len).
//! Without `modules.json` sentence-transformers builds mean pooling without normalization, and
//! so does [`Pooling::from_dir`]. Pooling sees only a sequence's own rows (packed, no padding),
//! so padding never enters a mean or a max.

use std::path::Path;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
}

impl PoolingMode {
    pub fn parse(s: &str) -> Option<PoolingMode> {
        match s {
            "cls" => Some(PoolingMode::Cls),
            "max" => Some(PoolingMode::Max),
            "mean" => Some(PoolingMode::Mean),
            "mean_sqrt_len" => Some(PoolingMode::MeanSqrtLen),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pooling {
    /// Concatenated in this order.
    pub modes: Vec<PoolingMode>,
    pub normalize: bool,
}

impl Default for Pooling {
    fn default() -> Pooling {
        Pooling {
            modes: vec![PoolingMode::Mean],
            normalize: false,
        }
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::BadConfig {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

impl Pooling {
    /// The pooling a sentence-transformers checkpoint directory asks for.
    pub fn from_dir(dir: &Path) -> Result<Pooling> {
        let Some(modules) = read_json(&dir.join("modules.json"))? else {
            return Ok(Pooling::default());
        };
        let list = modules.as_array().cloned().unwrap_or_default();
        let kind = |m: &serde_json::Value| {
            m.get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string()
        };
        let normalize = list.iter().any(|m| kind(m).ends_with(".Normalize"));
        let mut pooling = Pooling {
            normalize,
            ..Pooling::default()
        };
        if let Some(m) = list.iter().find(|m| kind(m).ends_with(".Pooling")) {
            let sub = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
            let path = dir.join(sub).join("config.json");
            if let Some(cfg) = read_json(&path)? {
                let on = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                let modes: Vec<PoolingMode> = [
                    ("pooling_mode_cls_token", PoolingMode::Cls),
                    ("pooling_mode_max_tokens", PoolingMode::Max),
                    ("pooling_mode_mean_tokens", PoolingMode::Mean),
                    (
                        "pooling_mode_mean_sqrt_len_tokens",
                        PoolingMode::MeanSqrtLen,
                    ),
                ]
                .into_iter()
                .filter(|(k, _)| on(k))
                .map(|(_, m)| m)
                .collect();
                for k in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
                    if on(k) {
                        return Err(Error::BadConfig {
                            path: path.display().to_string(),
                            reason: format!("`{k}` is not supported"),
                        });
                    }
                }
                if !modes.is_empty() {
                    pooling.modes = modes;
                }
            }
        }
        Ok(pooling)
    }

    /// Output width for hidden size `hidden`.
    pub fn dim(&self, hidden: usize) -> usize {
        hidden * self.modes.len()
    }

    /// One embedding from a sequence's rows `h (len, hidden)`; an empty sequence pools to zeros.
    pub fn pool(&self, h: &[f32], hidden: usize) -> Vec<f32> {
        let len = h.len().checked_div(hidden).unwrap_or(0);
        let mut out = Vec::with_capacity(self.dim(hidden));
        for mode in &self.modes {
            match mode {
                PoolingMode::Cls => out.extend_from_slice(if len > 0 { &h[..hidden] } else { &[] }),
                PoolingMode::Max => {
                    let mut m = vec![f32::NEG_INFINITY; hidden];
                    for row in h.chunks_exact(hidden) {
                        m.iter_mut().zip(row).for_each(|(a, &b)| *a = a.max(b));
                    }
                    out.extend(m);
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let mut s = vec![0.0f32; hidden];
                    for row in h.chunks_exact(hidden) {
                        s.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
                    }
                    // sentence-transformers clamps the token count at 1e-9.
                    let d = if *mode == PoolingMode::Mean {
                        (len as f32).max(1e-9)
                    } else {
                        (len as f32).max(1e-9).sqrt()
                    };
                    out.extend(s.iter().map(|x| x / d));
                }
            }
        }
        out.resize(self.dim(hidden), 0.0);
        if self.normalize {
            normalize(&mut out);
        }
        out
    }
}

/// L2 normalization as `torch.nn.functional.normalize` (norm clamped at 1e-12).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)) as f32
    }
}

#[cfg(test)]
#[path = "tests/pooling.rs"]
mod tests;
