//! Checkpoints that resume exactly: trainable tensors, optimizer moments, the step and the
//! data cursor. Every random choice is a pure function of the seed and a counter (the data
//! order of `(seed, epoch)`, dropout masks of `(seed, forward pass)`), so the "RNG state" a
//! checkpoint records is the seed plus those counters.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{Objective, Rule, TrainError, Trainer};
use crate::engine::data::Cursor;

pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    cursor: Cursor,
    seed: u64,
    /// Dropout masks are drawn per forward pass; this is the next pass number.
    next_pass: u64,
}

impl<O: Objective> Trainer<O> {
    /// Writes trainable tensors, optimizer state and trainer state into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), TrainError> {
        let fail = |reason: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(
            &self.objective.tensors(),
            Some(meta),
            &dir.join(ADAPTER_FILE),
        )
        .map_err(|e| fail(e.to_string()))?;
        match &self.rule {
            Rule::Gradient(o) => o.save(&dir.join(OPTIMIZER_FILE))?,
            // The state of the draw that took the last step (none before the first step).
            Rule::Layerwise(l) => {
                if let Some(o) = l.current() {
                    o.save(&dir.join(OPTIMIZER_FILE))?;
                }
            }
            Rule::ZerothOrder(m) => m.save(&dir.join(OPTIMIZER_FILE), self.step)?,
        }
        let state = TrainerState {
            step: self.step,
            cursor: self.train.cursor(),
            seed: self.config.seed,
            next_pass: self.step * self.config.grad_accum.max(1) as u64,
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| fail(e.to_string()))?;
        std::fs::write(dir.join(STATE_FILE), json).map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// Restores a checkpoint written by [`Self::save_checkpoint`] into this trainer (whose
    /// parameters must have the same layout) so training continues exactly where it stopped.
    pub fn resume(&mut self, dir: &Path) -> Result<(), TrainError> {
        let fail = |reason: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let text =
            std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| fail(e.to_string()))?;
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if state.seed != self.config.seed {
            return Err(fail(format!(
                "was trained with seed {}, this run has seed {}",
                state.seed, self.config.seed
            )));
        }
        let device: Device = self.objective.device().clone();
        let bytes = std::fs::read(dir.join(ADAPTER_FILE)).map_err(|e| fail(e.to_string()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
        self.objective.load_tensors(&tensors)?;
        match &mut self.rule {
            Rule::Gradient(o) => o.load(&dir.join(OPTIMIZER_FILE), &device)?,
            Rule::ZerothOrder(m) => {
                m.load(&dir.join(OPTIMIZER_FILE), &device)?;
            }
            // The draw of the last step taken is a function of the seed and its interval.
            Rule::Layerwise(l) if state.step > 0 => {
                l.enter(self.objective.vars(), state.step - 1)?;
                l.optimizer()?.load(&dir.join(OPTIMIZER_FILE), &device)?;
            }
            Rule::Layerwise(_) => {}
        }
        self.train.seek(state.cursor);
        self.step = state.step;
        Ok(())
    }
}
