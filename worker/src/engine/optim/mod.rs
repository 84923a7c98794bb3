//! Optimization: our own optimizers (candle's keep their state private, so they cannot be
//! checkpointed), learning-rate schedules and global-norm gradient clipping.
//!
//! Every optimizer implements [`Algorithm`]; [`Optimizer`] owns the parameters, the LoRA+
//! multipliers and the step count, and writes any algorithm's state to one safetensors file
//! (tensors, plus the scalars as exact bit patterns in the metadata) so a checkpoint resumes
//! bit for bit.

pub mod adafactor;
pub mod adamw;
pub mod dadapt;
pub mod dog;
pub mod grads;
pub mod lion;
pub mod mezo;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

pub use adafactor::{Adafactor, AdafactorConfig};
pub use adamw::{AdamW, AdamWConfig};
pub use dadapt::{DAdaptAdam, DAdaptConfig};
pub use dog::{Dog, DogConfig};
pub use grads::Grads;
pub use lion::{Lion, LionConfig};
pub use mezo::{Mezo, MezoConfig, MezoStep};
pub use schedule::{DecayShape, Schedule, ScheduleKind};

/// Optimizer failures: tensor errors and state files that do not fit the parameters.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer state: {0}")]
    State(String),
    #[error("cannot access optimizer state file {path}: {reason}")]
    Io {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Which optimizer, with its constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    AdamW(AdamWConfig),
    Lion(LionConfig),
    Adafactor(AdafactorConfig),
    Dog(DogConfig),
    DAdaptAdam(DAdaptConfig),
    /// Zeroth order: the trainer steps it with losses instead of gradients ([`Mezo`]).
    Mezo(MezoConfig),
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::AdamW(AdamWConfig::default())
    }
}

/// The per-parameter state `what` of `name`: every algorithm keeps one entry per parameter,
/// created with it, so a missing one is a state-file or wiring error, reported by name.
pub(crate) fn state_of<'a, T>(
    map: &'a mut std::collections::BTreeMap<String, T>,
    name: &str,
    what: &str,
) -> Result<&'a mut T, OptimError> {
    map.get_mut(name)
        .ok_or_else(|| OptimError::State(format!("no {what} for `{name}`")))
}

/// The trainable parameters and their learning-rate multipliers (LoRA+).
#[derive(Debug, Clone)]
pub struct Params {
    vars: BTreeMap<String, Var>,
    lr_scale: BTreeMap<String, f64>,
}

impl Params {
    /// Every parameter with its learning-rate multiplier, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var, f64)> {
        self.vars
            .iter()
            .map(|(n, v)| (n, v, self.lr_scale.get(n).copied().unwrap_or(1.0)))
    }

    /// The gradient of `name`, in the parameter's dtype.
    pub fn grad(&self, grads: &Grads, name: &str, var: &Var) -> Result<Tensor, OptimError> {
        let g = grads
            .0
            .get(name)
            .ok_or_else(|| OptimError::State(format!("no gradient for `{name}`")))?;
        Ok(g.to_dtype(var.dtype())?)
    }
}

/// One optimization algorithm's update rule and state.
pub trait Algorithm {
    /// Written into the state file; a file of another algorithm is refused on load.
    const FORMAT: &'static str;

    /// Applies update number `t` (1-based) with learning rate `lr`; returns the effective
    /// step size (`lr`, or the adapted step of a learning-rate-free optimizer).
    fn update(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        t: u64,
    ) -> Result<f64, OptimError>;

    /// State tensors by name.
    fn tensors(&self) -> BTreeMap<String, Tensor>;

    /// State scalars by name.
    fn scalars(&self) -> BTreeMap<String, f64>;

    /// Restores what [`Self::tensors`] and [`Self::scalars`] returned.
    fn restore(&mut self, params: &Params, state: &SavedState) -> Result<(), OptimError>;
}

/// A state file's contents, checked against the parameters as they are read.
pub struct SavedState {
    tensors: HashMap<String, Tensor>,
    scalars: BTreeMap<String, f64>,
}

impl SavedState {
    /// The state tensor `key`, which must have `dims`, converted like `like`.
    pub fn tensor(&self, key: &str, dims: &[usize], like: &Var) -> Result<Tensor, OptimError> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| OptimError::State(format!("missing `{key}`")))?;
        if t.dims() != dims {
            return Err(OptimError::State(format!(
                "`{key}` has shape {:?}, expected {dims:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(like.dtype())?.to_device(like.device())?)
    }

    /// The state scalar `key`.
    pub fn scalar(&self, key: &str) -> Result<f64, OptimError> {
        self.scalars
            .get(key)
            .copied()
            .ok_or_else(|| OptimError::State(format!("missing scalar `{key}`")))
    }
}

#[derive(Debug)]
enum Algo {
    AdamW(AdamW),
    Lion(Lion),
    Adafactor(Adafactor),
    Dog(Dog),
    DAdaptAdam(DAdaptAdam),
}

/// Dispatches to the algorithm inside [`Algo`].
macro_rules! with_algo {
    ($algo:expr, $a:ident => $body:expr) => {
        match $algo {
            Algo::AdamW($a) => $body,
            Algo::Lion($a) => $body,
            Algo::Adafactor($a) => $body,
            Algo::Dog($a) => $body,
            Algo::DAdaptAdam($a) => $body,
        }
    };
}

/// An optimizer over named `Var`s. The learning rate is passed to each [`Optimizer::step`]
/// so the schedule lives outside; per-parameter multipliers give LoRA+ (`lr_B = λ·lr`).
#[derive(Debug)]
pub struct Optimizer {
    params: Params,
    algo: Algo,
    step: u64,
}

impl Optimizer {
    pub fn new(vars: &BTreeMap<String, Var>, config: OptimizerConfig) -> Result<Self, OptimError> {
        let algo = match config {
            OptimizerConfig::AdamW(c) => Algo::AdamW(AdamW::new(vars, c)?),
            OptimizerConfig::Lion(c) => Algo::Lion(Lion::new(vars, c)?),
            OptimizerConfig::Adafactor(c) => Algo::Adafactor(Adafactor::new(vars, c)?),
            OptimizerConfig::Dog(c) => Algo::Dog(Dog::new(vars, c)?),
            OptimizerConfig::DAdaptAdam(c) => Algo::DAdaptAdam(DAdaptAdam::new(vars, c)?),
            OptimizerConfig::Mezo(_) => {
                return Err(OptimError::State(
                    "mezo steps from losses, not gradients: the trainer runs it".into(),
                ));
            }
        };
        Ok(Self {
            params: Params {
                vars: vars.clone(),
                lr_scale: BTreeMap::new(),
            },
            algo,
            step: 0,
        })
    }

    /// Multiplies the learning rate of every parameter whose name satisfies `pred`
    /// (LoRA+: `|n| n.ends_with("lora_B.weight")`, factor ≈ 16).
    pub fn set_lr_scale(&mut self, pred: impl Fn(&str) -> bool, factor: f64) {
        for name in self.params.vars.keys() {
            if pred(name) {
                self.params.lr_scale.insert(name.clone(), factor);
            }
        }
    }

    /// Bytes of optimizer state held (what LISA saves on).
    pub fn state_bytes(&self) -> usize {
        let tensors = with_algo!(&self.algo, a => a.tensors());
        tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`; every parameter must have a gradient. Returns the
    /// effective step size (what a learning-rate-free optimizer chose, times `lr`).
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<f64, OptimError> {
        self.step += 1;
        let (params, t) = (&self.params, self.step);
        with_algo!(&mut self.algo, a => a.update(params, grads, lr, t))
    }

    fn format(&self) -> &'static str {
        fn of<A: Algorithm>(_: &A) -> &'static str {
            A::FORMAT
        }
        with_algo!(&self.algo, a => of(a))
    }

    /// Writes the state (see [`write_state`]).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let (tensors, scalars) = with_algo!(&self.algo, a => (a.tensors(), a.scalars()));
        write_state(path, self.format(), self.step, &tensors, &scalars)
    }

    /// Reads a state written by [`Self::save`] for the same algorithm and parameters.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<(), OptimError> {
        let (step, state) = read_state(path, self.format(), device)?;
        let params = &self.params;
        with_algo!(&mut self.algo, a => a.restore(params, &state))?;
        self.step = step;
        Ok(())
    }
}

/// Writes an optimizer state as safetensors: the algorithm's `format`, the step count and the
/// scalars (as bit patterns, so they read back exactly) in the metadata.
pub(crate) fn write_state(
    path: &Path,
    format: &str,
    step: u64,
    tensors: &BTreeMap<String, Tensor>,
    scalars: &BTreeMap<String, f64>,
) -> Result<(), OptimError> {
    let mut meta = HashMap::from([
        ("format".to_string(), format.to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    for (k, v) in scalars {
        meta.insert(format!("scalar.{k}"), format!("{:016x}", v.to_bits()));
    }
    safetensors::tensor::serialize_to_file(tensors, Some(meta), path).map_err(|e| OptimError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a state written by [`write_state`], refusing one of another `format`.
pub(crate) fn read_state(
    path: &Path,
    format: &str,
    device: &Device,
) -> Result<(u64, SavedState), OptimError> {
    let io = |reason: String| OptimError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(e.to_string()))?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let found = meta.get("format").map(String::as_str).unwrap_or("");
    if found != format {
        return Err(OptimError::State(format!(
            "the checkpoint's optimizer state is `{found}`, this run uses `{format}`"
        )));
    }
    let step = meta
        .get("step")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| io("no `step` in metadata".into()))?;
    let mut scalars = BTreeMap::new();
    for (k, v) in meta {
        if let Some(name) = k.strip_prefix("scalar.") {
            let bits = u64::from_str_radix(v, 16)
                .map_err(|_| io(format!("scalar `{name}` is not a bit pattern")))?;
            scalars.insert(name.to_string(), f64::from_bits(bits));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    Ok((step, SavedState { tensors, scalars }))
}

/// `Σ x²` of a tensor, in f64.
pub(crate) fn sum_sq(t: &Tensor) -> Result<f64, OptimError> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests;
