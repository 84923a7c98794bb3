//! The merged-model export a decoder job's spec can ask for (`export_merged`): the trained
//! weights folded into the base model, in the dtype asked, with the base's tokenizer files, so
//! `transformers` loads the folder directly. Uploaded as `ARTIFACT_KIND_MERGED`.

use candle_core::DType;
use tuna_spec::MergedDtype;

use super::system;
use crate::agent::{JobInputs, RunError, RunOutcome, Stop};
use crate::engine::export::{MERGED_SHARD_BYTES, save_merged};
use crate::engine::model::Llama;

/// Files of an HF model folder that describe its tokenizer and generation defaults.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Adds the merged model to a run that produced its final adapter, when the spec asks for it.
pub(super) fn add_merged(
    outcome: RunOutcome,
    inputs: &JobInputs,
    model: &mut Llama,
) -> Result<RunOutcome, RunError> {
    let Some(dtype) = inputs.spec.export_merged else {
        return Ok(outcome);
    };
    let dtype = match dtype {
        MergedDtype::F32 => DType::F32,
        MergedDtype::Bf16 => DType::BF16,
    };
    let write = |model: &mut Llama| -> Result<Option<std::path::PathBuf>, RunError> {
        let dir = inputs.work_dir.join("merged");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(system)?;
        }
        save_merged(&dir, model, dtype, MERGED_SHARD_BYTES).map_err(system)?;
        for name in TOKENIZER_FILES {
            let from = inputs.model_dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name)).map_err(system)?;
            }
        }
        Ok(Some(dir))
    };
    Ok(match outcome {
        RunOutcome::Finished {
            step, adapter_dir, ..
        } => RunOutcome::Finished {
            step,
            adapter_dir,
            merged_dir: write(model)?,
        },
        RunOutcome::Stopped {
            reason: Stop::StopEarly,
            step,
            adapter_dir: Some(adapter_dir),
            ..
        } => RunOutcome::Stopped {
            reason: Stop::StopEarly,
            step,
            adapter_dir: Some(adapter_dir),
            merged_dir: write(model)?,
        },
        other @ RunOutcome::Stopped { .. } => other,
    })
}
