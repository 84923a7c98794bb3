//! Decoder jobs: a Llama-family decoder (HF folder or GGUF) trained with any method on
//! text, prompt/completion or chat data (next-token loss), or on preference pairs (DPO, IPO,
//! ORPO).

use std::path::Path;

use tuna_proto::v1 as pb;
use tuna_spec::{LoraInit as SpecInit, Method as SpecMethod, PreferenceParams};

use super::chain::{self, Chain};
use super::merged::add_merged;
use super::settings::{adapter_config, records, seed, train_config};
use super::{classify_error, drive, shard_of, system, user};
use crate::agent::{Control, JobInputs, Reporter, RunError, RunOutcome};
use crate::engine::adapters::methods::{self, Method};
use crate::engine::adapters::{AdapterSet, LoraInit};
use crate::engine::data::tokenizer::load_for_model;
use crate::engine::data::{
    Batch, Batchable, Example, Loader, PairExample, Tokenizer, examples_from_records,
    pairs_from_records,
};
use crate::engine::export;
use crate::engine::lora_ga;
use crate::engine::model::{Llama, gguf};
use crate::engine::placement::Placement;
use crate::engine::trainer::lisa::LisaConfig;
use crate::engine::trainer::preference::PreferenceObjective;
use crate::engine::trainer::{TrainConfig, Trainer};

/// PEFT's LoRA targets for Llama when the spec leaves them to the architecture.
const LORA_DEFAULT: [&str; 2] = ["q_proj", "v_proj"];

pub(super) fn train(
    inputs: &JobInputs,
    method: &SpecMethod,
    preference: Option<PreferenceParams>,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let spec = &inputs.spec;
    let h = &spec.hyperparameters;
    let seed = seed(spec);
    let (mut model, tok) = load_model(inputs)?;
    model.set_gradient_checkpointing(h.gradient_checkpointing);
    let tok = tok.as_ref();
    if model.config().vocab_size < tok.vocab_size() {
        return Err(user(format!(
            "the model's vocabulary ({}) is smaller than its tokenizer's ({})",
            model.config().vocab_size,
            tok.vocab_size()
        )));
    }
    let max_len = h.max_seq_len.max(2) as usize;
    let batch = h.batch_size.max(1) as usize;
    if let Some(params) = preference {
        let train_set = pairs(inputs.training()?, inputs.training_format, tok, max_len)?;
        let train_set = shard_of(train_set, inputs.part)?;
        let total = spec.total_steps(train_set.len());
        let train_loader = Loader::new(train_set, batch, seed, tok.pad_id()).map_err(user)?;
        let eval_loader = eval_loader(inputs, batch, seed, tok, |p, f| pairs(p, f, tok, max_len))?;
        let config = config_for(spec, total, method, &model)?;
        let adapters = attach(&mut model, method, seed, None)?;
        let objective = PreferenceObjective {
            model: &model,
            adapters: &adapters,
            params,
        };
        let mut trainer = Trainer::with_objective(objective, train_loader, eval_loader, config)
            .map_err(classify_error)?;
        let export = |dir: &Path| {
            export::save_adapter(dir, &adapters, &spec.base_model, "CAUSAL_LM").map_err(system)
        };
        let outcome = drive(&mut trainer, inputs, control, reporter, &export)?;
        drop(trainer);
        return add_merged(outcome, inputs, &mut model);
    }
    let train_set = examples(inputs.training()?, inputs.training_format, tok, max_len)?;
    let train_set = shard_of(train_set, inputs.part)?;
    let total = spec.total_steps(train_set.len());
    let train_loader = Loader::new(train_set, batch, seed, tok.pad_id())
        .map_err(user)?
        .with_prompt_weight(h.prompt_loss_weight as f32);
    let eval_loader = eval_loader(inputs, batch, seed, tok, |p, f| {
        examples(p, f, tok, max_len)
    })?;
    let config = config_for(spec, total, method, &model)?;
    // LoRA-GA's init reads the first optimizer window's batches, from a copy of the loader so
    // the training order is untouched; the same batches on resume rebuild the same base
    // offset before the checkpoint's factors are loaded.
    let ga_batches = match method {
        SpecMethod::Lora { lora: p } | SpecMethod::Dora { lora: p }
            if p.init == SpecInit::LoraGa =>
        {
            let mut probe = train_loader.clone();
            Some(
                (0..config.grad_accum)
                    .map(|_| probe.next_batch(model.device()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(user)?,
            )
        }
        _ => None,
    };
    let adapters = attach(&mut model, method, seed, ga_batches.as_deref())?;
    // A chain of LoRA merges and restarts its adapter every `every` steps.
    if let SpecMethod::Lora { lora: p } = method
        && let Some(every) = p.chain_every
    {
        let init = match p.init {
            SpecInit::Gaussian => LoraInit::Gaussian,
            SpecInit::Default | SpecInit::Pissa | SpecInit::LoraGa => LoraInit::Default,
        };
        let chain = Chain {
            model: &mut model,
            adapters: &adapters,
            train: train_loader,
            eval: eval_loader,
            config,
            every: every.max(1) as u64,
            init,
            seed,
            base_model: &spec.base_model,
        };
        let outcome = chain::drive(chain, inputs, control, reporter)?;
        return add_merged(outcome, inputs, &mut model);
    }
    let mut trainer = Trainer::new(&model, &adapters, train_loader, eval_loader, config)
        .map_err(classify_error)?;
    let export = |dir: &Path| {
        export::save_adapter(dir, &adapters, &spec.base_model, "CAUSAL_LM").map_err(system)
    };
    let outcome = drive(&mut trainer, inputs, control, reporter, &export)?;
    drop(trainer);
    add_merged(outcome, inputs, &mut model)
}

/// The run's loop settings, with LISA's layer sampling sized to the model.
fn config_for(
    spec: &tuna_spec::JobSpec,
    total: u64,
    method: &SpecMethod,
    model: &Llama,
) -> Result<TrainConfig, RunError> {
    let mut config = train_config(spec, total);
    if let SpecMethod::Lisa { layers, interval } = method {
        let num_layers = model.config().num_hidden_layers;
        let layers = (*layers).max(1) as usize;
        if layers > num_layers {
            return Err(user(format!(
                "spec.method.lisa.layers is {layers} but the model has {num_layers} decoder layers"
            )));
        }
        config.lisa = Some(LisaConfig {
            layers,
            interval: (*interval).max(1) as u64,
            num_layers,
        });
    }
    Ok(config)
}

/// Attaches the method's trainable weights to `model`. LoRA-GA estimates its init from
/// `ga_batches` (causal-LM jobs only; the spec refuses it elsewhere).
fn attach(
    model: &mut Llama,
    method: &SpecMethod,
    seed: u64,
    ga_batches: Option<&[Batch]>,
) -> Result<AdapterSet, RunError> {
    let lora = |init: LoraInit, dora: bool, p: &tuna_spec::LoraParams| {
        adapter_config(p, dora, init, &LORA_DEFAULT, seed)
    };
    match method {
        SpecMethod::Lora { lora: p } | SpecMethod::Dora { lora: p } => {
            let dora = matches!(method, SpecMethod::Dora { .. });
            let init = match p.init {
                SpecInit::Default => LoraInit::Default,
                SpecInit::Gaussian => LoraInit::Gaussian,
                SpecInit::Pissa => LoraInit::Pissa,
                SpecInit::LoraGa => {
                    let batches = ga_batches.ok_or_else(|| {
                        user("spec.method.lora.init: lora_ga needs causal-LM training batches")
                    })?;
                    return lora_ga::attach(
                        model,
                        &lora(LoraInit::LoraGa, dora, p),
                        batches,
                        lora_ga::DEFAULT_GAMMA,
                    )
                    .map_err(user);
                }
            };
            AdapterSet::attach(model, &lora(init, dora, p)).map_err(user)
        }
        SpecMethod::Ia3 { target_modules } => methods::attach(
            model,
            &Method::Ia3 {
                target_modules: target_modules.clone(),
                feedforward_modules: None,
            },
            seed,
        )
        .map_err(user),
        SpecMethod::PromptTuning { num_virtual_tokens } => methods::attach(
            model,
            &Method::PromptTuning {
                num_virtual_tokens: (*num_virtual_tokens).max(1) as usize,
            },
            seed,
        )
        .map_err(user),
        SpecMethod::PrefixTuning { num_virtual_tokens } => methods::attach(
            model,
            &Method::PrefixTuning {
                num_virtual_tokens: (*num_virtual_tokens).max(1) as usize,
                layout: None,
            },
            seed,
        )
        .map_err(user),
        SpecMethod::Bitfit => methods::attach(model, &Method::BitFit, seed).map_err(user),
        // LISA trains the full model's weights, a sampled few layers at a time (the trainer).
        SpecMethod::Full | SpecMethod::Lisa { .. } => {
            methods::attach(model, &Method::Full, seed).map_err(user)
        }
    }
}

/// The validation set's loader, when the job has one; `read` tokenizes it as the objective
/// needs (examples or preference pairs).
fn eval_loader<E: Batchable>(
    inputs: &JobInputs,
    batch: usize,
    seed: u64,
    tok: &dyn Tokenizer,
    read: impl Fn(&Path, pb::DatasetFormat) -> Result<Vec<E>, RunError>,
) -> Result<Option<Loader<E>>, RunError> {
    inputs
        .validation_file
        .as_deref()
        .map(|p| {
            Loader::new(
                read(p, inputs.validation_format)?,
                batch,
                seed,
                tok.pad_id(),
            )
            .map_err(user)
        })
        .transpose()
}

fn pairs(
    path: &Path,
    format: pb::DatasetFormat,
    tok: &dyn Tokenizer,
    max_len: usize,
) -> Result<Vec<PairExample>, RunError> {
    let records = records(path, format)?;
    pairs_from_records(&records, tok, max_len).map_err(user)
}

pub(super) fn examples(
    path: &Path,
    format: pb::DatasetFormat,
    tok: &dyn Tokenizer,
    max_len: usize,
) -> Result<Vec<Example>, RunError> {
    let records = records(path, format)?;
    examples_from_records(&records, tok, max_len).map_err(user)
}

/// The model and the tokenizer that goes with it: an HF folder's tokenizer.json (the byte
/// tokenizer when the folder has none), or the tokenizer rebuilt from GGUF metadata.
pub(super) fn load_model(inputs: &JobInputs) -> Result<(Llama, Box<dyn Tokenizer>), RunError> {
    let at = Placement::resolve(&inputs.device, inputs.spec.dtype, &inputs.spec.method);
    if inputs.model_format == pb::ModelFormat::Gguf {
        let file = std::fs::read_dir(&inputs.model_dir)
            .map_err(system)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "gguf"))
            .ok_or_else(|| user("the GGUF model has no .gguf file"))?;
        let m = gguf::read(&file, at.base_dtype, &at.device).map_err(user)?;
        let Some(tok) = m.tokenizer else {
            return Err(user(format!(
                "no tokenizer could be built from the GGUF metadata: {}",
                m.tokenizer_error.unwrap_or_default()
            )));
        };
        let model = Llama::load(m.config, &m.weights).map_err(user)?;
        return Ok((model, Box::new(tok)));
    }
    let model = Llama::from_dir(&inputs.model_dir, at.base_dtype, &at.device).map_err(user)?;
    let tok = load_for_model(&inputs.model_dir).map_err(user)?;
    Ok((model, tok))
}
