//! Sequence-classification jobs (`task = classification`): a BERT-family encoder from an HF
//! folder, LoRA/DoRA adapters plus a fresh classification head, trained on `{"text","label"}`
//! data through the one training loop (accumulation, LoRA+, checkpoints, exact resume), with
//! loss and accuracy reported and the adapter exported with the head as PEFT
//! `modules_to_save`.

use std::path::Path;

use tuna_proto::v1 as pb;
use tuna_spec::{ClassInit, LoraParams};

use super::settings::{adapter_config, records, seed, train_config};
use super::{classify_error, drive, system, user};
use crate::agent::{Control, JobInputs, Reporter, RunError, RunOutcome};
use crate::engine::adapters::{AdapterSet, LoraInit};
use crate::engine::classifier;
use crate::engine::data::classify::class_examples;
use crate::engine::data::tokenizer::load_for_model;
use crate::engine::data::{Labels, Loader};
use crate::engine::model::bert::{Bert, ClassifierHead};
use crate::engine::placement::Placement;
use crate::engine::trainer::Trainer;

/// PEFT's LoRA targets for BERT when the spec leaves them to the architecture.
const LORA_DEFAULT: [&str; 2] = ["query", "value"];

pub(super) fn train(
    inputs: &JobInputs,
    lora: &LoraParams,
    dora: bool,
    init: ClassInit,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let spec = &inputs.spec;
    if inputs.model_format == pb::ModelFormat::Gguf {
        return Err(user(
            "classification needs an encoder in an HF folder (config.json, model.safetensors, \
             tokenizer.json); GGUF models are decoders",
        ));
    }
    let h = &spec.hyperparameters;
    let seed = seed(spec);
    let at = Placement::resolve(&inputs.device, spec.dtype, &spec.method);
    let mut model = Bert::from_dir(&inputs.model_dir, at.base_dtype, &at.device).map_err(user)?;
    let tok = load_for_model(&inputs.model_dir).map_err(user)?;
    let tok = tok.as_ref();
    let max_len = (h.max_seq_len.max(2) as usize).min(model.config().max_position_embeddings);
    let train_records = records(inputs.training()?, inputs.training_format)?;
    let labels = Labels::from_records(train_records.iter().map(|(_, r)| r));
    if labels.len() < 2 {
        return Err(user(format!(
            "a classification dataset needs at least 2 distinct labels, found {}",
            labels.len()
        )));
    }
    let train_set = class_examples(&train_records, tok, &labels, max_len).map_err(user)?;
    let eval_set = match &inputs.validation_file {
        Some(p) => {
            let records = records(p, inputs.validation_format)?;
            Some(class_examples(&records, tok, &labels, max_len).map_err(user)?)
        }
        None => None,
    };
    let init = match init {
        ClassInit::Default => LoraInit::Default,
        ClassInit::Gaussian => LoraInit::Gaussian,
        ClassInit::Pissa => LoraInit::Pissa,
    };
    let cfg = adapter_config(lora, dora, init, &LORA_DEFAULT, seed);
    let adapters = AdapterSet::attach(&mut model, &cfg).map_err(user)?;
    let head = ClassifierHead::new(
        model.config().hidden_size,
        labels.len(),
        seed,
        model.device(),
    )
    .map_err(system)?;
    let batch = h.batch_size.max(1) as usize;
    let total = spec.total_steps(train_set.len());
    let train_loader = Loader::new(train_set, batch, seed, tok.pad_id()).map_err(user)?;
    let eval_loader = match eval_set {
        Some(set) => Some(Loader::new(set, batch, seed, tok.pad_id()).map_err(user)?),
        None => None,
    };
    let mut trainer = Trainer::classifier(
        &model,
        &adapters,
        &head,
        train_loader,
        eval_loader,
        train_config(spec, total),
    )
    .map_err(classify_error)?;
    let export = |dir: &Path| {
        classifier::save_adapter(dir, &adapters, &head, labels.names(), &spec.base_model)
            .map_err(system)
    };
    drive(&mut trainer, inputs, control, reporter, &export)
}
