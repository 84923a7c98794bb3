//! Frozen base weights from an HF model folder (`model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), converted to one dtype on one device.
//!
//! Files are read into memory rather than memory-mapped: mapping needs `unsafe`
//! (`MmapedSafetensors::new`, `memmap2::Mmap::map`), which this workspace forbids.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// A weight file that cannot be read, or a tensor that is missing or has the wrong shape.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read weights {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed safetensors file {path}: {source}")]
    Format {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("malformed shard index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("no model.safetensors or model.safetensors.index.json in {0}")]
    NoWeights(PathBuf),
    #[error("missing tensor `{0}` in model weights")]
    Missing(String),
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("converting tensor `{name}`: {source}")]
    Convert {
        name: String,
        source: candle_core::Error,
    },
}

/// Named tensors, all in `dtype` on `device`. Plain `Tensor`s, never `Var`s: base weights
/// are frozen, so backward neither computes nor stores gradients for them.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Wraps already-built tensors (tests, GGUF import).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self {
            tensors,
            dtype,
            device: device.clone(),
        }
    }

    /// Loads `model.safetensors`, or every shard named in `model.safetensors.index.json`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self, WeightError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else {
            return Err(WeightError::NoWeights(dir.to_path_buf()));
        };
        let mut tensors = HashMap::new();
        for file in files {
            let bytes = std::fs::read(&file).map_err(|source| WeightError::Read {
                path: file.clone(),
                source,
            })?;
            // Read on the CPU; `get` converts each tensor there and moves only the working
            // copy to the device, so the device never holds the file's dtype and ours at once.
            let loaded =
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|source| {
                    WeightError::Format {
                        path: file.clone(),
                        source,
                    }
                })?;
            tensors.extend(loaded);
        }
        Ok(Self::from_tensors(tensors, dtype, device))
    }

    /// The tensor `name`, checked against `shape` and converted to the working dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightError::Missing(name.to_string()))?;
        if t.dims() != shape {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        let convert = |source| WeightError::Convert {
            name: name.to_string(),
            source,
        };
        t.to_dtype(self.dtype)
            .and_then(|t| t.to_device(&self.device))
            .map_err(convert)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// The distinct shard files of an HF `model.safetensors.index.json` (its `weight_map`).
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let text = std::fs::read_to_string(index).map_err(|source| WeightError::Read {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| WeightError::Index {
        path: index.to_path_buf(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{name}` maps to a non-string")))?;
        if file.contains('/') || file.contains("..") {
            return Err(bad(format!("shard name `{file}` is not a plain file name")));
        }
        files.insert(file.to_string());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
