//! Merge jobs (`task = merge`): the sources' final LoRA adapters merged per module
//! ([`crate::engine::merge`]), re-factored as one LoRA adapter, evaluated on the validation
//! file when the job has one, and exported (with the merged model when asked).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{Device, Tensor};
use tuna_spec::{MergeMethod, MergeParams, metrics};

use super::causal::{examples, load_model};
use super::merged::add_merged;
use super::settings::{seed, train_config};
use super::{classify_error, eval_progress, system, user};
use crate::agent::{Control, JobInputs, Progress, Reporter, RunError, RunOutcome, Stop};
use crate::engine::adapters::{Adaptable, AdapterConfig, AdapterSet, PEFT_PREFIX, TargetModules};
use crate::engine::data::Loader;
use crate::engine::export::{self, LoraFile};
use crate::engine::merge::{self, LowRank, Rule};
use crate::engine::trainer::Trainer;

const A: &str = ".lora_A.weight";
const B: &str = ".lora_B.weight";

pub(super) fn run(
    inputs: &JobInputs,
    params: &MergeParams,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let spec = &inputs.spec;
    if inputs.merge_sources.len() != params.sources.len() {
        return Err(system(format!(
            "the lease carries {} source adapters for {} sources",
            inputs.merge_sources.len(),
            params.sources.len()
        )));
    }
    let sources: Vec<LoraFile> = inputs
        .merge_sources
        .iter()
        .zip(&params.sources)
        .map(|(dir, id)| export::read_lora(dir).map_err(|e| user(format!("source {id}: {e}"))))
        .collect::<Result<_, _>>()?;
    let (mut model, tok) = load_model(inputs)?;
    let tok = tok.as_ref();
    // The output adapts every module any source adapts (a source without one has ΔW = 0).
    let mut names = BTreeSet::new();
    for s in &sources {
        for key in s.tensors.keys() {
            if let Some(module) = key.strip_suffix(A) {
                names.insert(module.rsplit('.').next().unwrap_or(module).to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(user("the sources' adapters hold no LoRA factors"));
    }
    let summed: usize = sources.iter().map(|s| s.config.r).sum();
    let mut rank = params.rank.map_or(summed, |r| r.max(1) as usize);
    for (path, lin) in model.linears() {
        if names.contains(path.rsplit('.').next().unwrap_or(&path)) {
            rank = rank.min(lin.out_features()).min(lin.in_features());
        }
    }
    let config = AdapterConfig::lora(rank, rank as f64, TargetModules::names(names));
    let adapters = AdapterSet::attach(&mut model, &config).map_err(user)?;
    let rule = match params.method {
        MergeMethod::Average => Rule::Average,
        MergeMethod::ModelStock => Rule::ModelStock,
        MergeMethod::TaskArithmetic => Rule::TaskArithmetic {
            weights: params.weights.clone(),
        },
        MergeMethod::Ties => Rule::Ties {
            weights: params.weights.clone(),
            density: params.density.unwrap_or(tuna_spec::DEFAULT_TIES_DENSITY),
        },
    };
    let dims: BTreeMap<String, (usize, usize)> = model
        .linears()
        .into_iter()
        .map(|(path, lin)| (path, (lin.out_features(), lin.in_features())))
        .collect();
    let mut merged = HashMap::new();
    let (mut worst, mut ratios) = (0.0_f64, Vec::new());
    for path in adapters.modules() {
        if control.stop_requested().is_some() {
            return Ok(stopped(control));
        }
        let key = format!("{PEFT_PREFIX}{path}");
        let (rows, cols) = dims
            .get(path)
            .copied()
            .ok_or_else(|| system(format!("no linear layer {path}")))?;
        let factored = sources
            .iter()
            .zip(&params.sources)
            .map(|(s, id)| {
                factors(s, &key, rows, cols).map_err(|e| user(format!("source {id}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (f, ratio) = match &rule {
            // TIES works entry by entry: the dense deltas, then a truncated SVD.
            Rule::Ties { .. } => {
                let dense: Vec<Vec<f64>> = factored
                    .iter()
                    .map(|f| {
                        f.as_ref()
                            .map_or(vec![0.0; rows * cols], |f| f.dense(rows, cols))
                    })
                    .collect();
                let m = merge::merge(&rule, &dense);
                (
                    merge::refactor(&m.delta, rows, cols, rank, seed(spec)),
                    m.ratio,
                )
            }
            Rule::Average | Rule::ModelStock | Rule::TaskArithmetic { .. } => {
                merge::merge_low_rank(&rule, &factored, rows, cols, rank, seed(spec))
            }
        };
        ratios.extend(ratio);
        worst = worst.max(f.relative_error);
        let tensor = |v: Vec<f64>, shape: (usize, usize)| {
            Tensor::from_vec(
                v.into_iter().map(|x| x as f32).collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )
            .map_err(system)
        };
        merged.insert(format!("{key}{B}"), tensor(f.b, (rows, f.r))?);
        merged.insert(format!("{key}{A}"), tensor(f.a, (f.r, cols))?);
    }
    let mut values = BTreeMap::from([(metrics::MERGE_RECONSTRUCTION_ERROR.to_string(), worst)]);
    if !ratios.is_empty() {
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        values.insert(metrics::MODEL_STOCK_RATIO.to_string(), mean);
    }
    tracing::info!(rank, reconstruction_error = worst, "merged the sources");
    reporter.progress(Progress { step: 0, values });
    if let Some(path) = inputs.validation_file.as_deref() {
        let h = &spec.hyperparameters;
        let max_len = h.max_seq_len.max(2) as usize;
        let set = examples(path, inputs.validation_format, tok, max_len)?;
        let loader = Loader::new(set, h.batch_size.max(1) as usize, seed(spec), tok.pad_id())
            .map_err(user)?;
        let trainer = Trainer::new(
            &model,
            &adapters,
            loader.clone(),
            Some(loader),
            train_config(spec, 0),
        )
        .map_err(classify_error)?;
        // Each source on the same data first, held exactly by the output adapter (its factors
        // in the first r columns, zeros after) when the output rank leaves room.
        for (i, source) in sources.iter().enumerate() {
            if source.config.r > rank || control.stop_requested().is_some() {
                continue;
            }
            adapters
                .load_tensors(&padded(source, &adapters, &dims, rank)?)
                .map_err(system)?;
            let e = trainer.evaluate().map_err(classify_error)?;
            reporter.progress(Progress {
                step: 0,
                values: BTreeMap::from([(metrics::source_eval_loss(i), e.loss)]),
            });
        }
        adapters.load_tensors(&merged).map_err(system)?;
        let e = trainer.evaluate().map_err(classify_error)?;
        reporter.progress(eval_progress(&e));
    }
    adapters.load_tensors(&merged).map_err(system)?;
    let adapter_dir = inputs.work_dir.join("adapter");
    export::save_adapter(&adapter_dir, &adapters, &spec.base_model, export::CAUSAL_LM)
        .map_err(system)?;
    let outcome = RunOutcome::Finished {
        step: 0,
        adapter_dir,
        merged_dir: None,
    };
    add_merged(outcome, inputs, &mut model)
}

/// The merge step of a lo-fi job: the plain average of its shards' deltas, at the sum of
/// their ranks (exact).
pub(super) fn lofi(inputs: &JobInputs) -> MergeParams {
    MergeParams {
        sources: (0..inputs.merge_sources.len())
            .map(|i| format!("shard {i}"))
            .collect(),
        method: MergeMethod::Average,
        weights: Vec::new(),
        rank: None,
        density: None,
    }
}

/// A source's factors as tensors of the output set (rank `rank ≥ r`, scale 1): `s·B` in the
/// first `r` columns of B and `A` in the first `r` rows of A, zeros elsewhere, so the output
/// adapter computes exactly the source's delta.
fn padded(
    source: &LoraFile,
    adapters: &AdapterSet,
    dims: &BTreeMap<String, (usize, usize)>,
    rank: usize,
) -> Result<HashMap<String, Tensor>, RunError> {
    let r = source.config.r;
    let scale = source.config.scale();
    let mut out = HashMap::new();
    for path in adapters.modules() {
        let key = format!("{PEFT_PREFIX}{path}");
        let (rows, cols) = dims
            .get(path)
            .copied()
            .ok_or_else(|| system(format!("no linear layer {path}")))?;
        let pad = |t: Option<&Tensor>, shape: (usize, usize), dim: usize, factor: f64| {
            let f32 = candle_core::DType::F32;
            let Some(t) = t else {
                return Tensor::zeros(shape, f32, &Device::Cpu);
            };
            let fill = if dim == 1 {
                (rows, rank - r)
            } else {
                (rank - r, cols)
            };
            let t = (t.to_dtype(f32)? * factor)?;
            Tensor::cat(&[&t, &Tensor::zeros(fill, f32, &Device::Cpu)?], dim)
        };
        let b = source.tensors.get(&format!("{key}{B}"));
        let a = source.tensors.get(&format!("{key}{A}"));
        out.insert(
            format!("{key}{B}"),
            pad(b, (rows, rank), 1, scale).map_err(system)?,
        );
        out.insert(
            format!("{key}{A}"),
            pad(a, (rank, cols), 0, 1.0).map_err(system)?,
        );
    }
    Ok(out)
}

/// One module of a source as factors (`s·B`, `A`, in f64), `None` when it does not adapt
/// the module.
fn factors(
    source: &LoraFile,
    key: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<LowRank>, String> {
    let (a, b) = (
        source.tensors.get(&format!("{key}{A}")),
        source.tensors.get(&format!("{key}{B}")),
    );
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (None, None) => return Ok(None),
        _ => return Err(format!("{key} has only one of lora_A and lora_B")),
    };
    let r = source.config.r;
    if a.dims() != [r, cols] || b.dims() != [rows, r] {
        return Err(format!(
            "{key}: lora_A {:?} and lora_B {:?} do not fit rank {r} on a [{rows}, {cols}] layer",
            a.dims(),
            b.dims()
        ));
    }
    let flat = |t: &Tensor, scale: f64| {
        t.to_dtype(candle_core::DType::F64)
            .and_then(|t| t * scale)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(|e| format!("{key}: {e}"))
    };
    let (b, a) = (flat(b, source.config.scale())?, flat(a, 1.0)?);
    if b.iter().chain(&a).any(|x| !x.is_finite()) {
        return Err(format!("{key} holds non-finite values"));
    }
    Ok(Some(LowRank { b, a, r }))
}

/// A merge stopped before it wrote anything (a cancel, a pause or a drain: it restarts from
/// the sources next time, which costs little).
fn stopped(control: &Control) -> RunOutcome {
    RunOutcome::Stopped {
        reason: control.stop_requested().unwrap_or(Stop::Cancel),
        step: 0,
        adapter_dir: None,
        merged_dir: None,
    }
}
