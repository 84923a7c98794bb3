//! Chain of LoRA (COLA, Xia et al. 2024, Algorithm 1): every `every` steps the LoRA adapter
//! is merged into the frozen base and restarted from a fresh init with a fresh optimizer.
//! Each finished link `(A_k, B_k)` is kept (small: r·(in + out) per module), so a checkpoint
//! holds the chain (`chain.safetensors`) next to the current link, a resumed run rebuilds the
//! merged base from it exactly, and the exported adapter is the whole chain as one LoRA of
//! rank `r·links` (`ΔW = s·Σ B_k A_k = s·[B_0 … B_n][A_0; …; A_n]`, exact).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;

use super::{classify_error, finish, report, report_base_eval, system, user};
use crate::agent::{Control, JobInputs, Reporter, RunError, RunOutcome};
use crate::engine::adapters::init::lora_a;
use crate::engine::adapters::linear::{low_rank_delta, merge_delta};
use crate::engine::adapters::{Adaptable, AdapterSet, LoraInit};
use crate::engine::data::Loader;
use crate::engine::export;
use crate::engine::model::Llama;
use crate::engine::trainer::{Outcome, TrainConfig, Trainer};

/// The chain's finished links, in a checkpoint folder.
pub const CHAIN_FILE: &str = "chain.safetensors";

/// One finished link: the adapter's tensors by PEFT key (`….lora_A.weight`, `….lora_B.weight`).
type Link = BTreeMap<String, Tensor>;

/// `W ← W + s·B·A` for every adapted linear, with the factors of `link` (the same merge
/// during training and when a resumed run rebuilds the base, so both bases are equal).
fn merge(model: &mut Llama, link: &Link) -> Result<(), RunError> {
    for (_, lin) in model.linears_mut() {
        let Some(lora) = lin.lora() else { continue };
        let get = |suffix: &str| {
            let key = format!("{}.{suffix}", lora.key);
            link.get(&key)
                .cloned()
                .ok_or_else(|| system(format!("chain link without `{key}`")))
        };
        let (a, b) = (get("lora_A.weight")?, get("lora_B.weight")?);
        let merged = low_rank_delta(&a, &b, lora.scale)
            .and_then(|delta| merge_delta(lin.weight(), &delta, None))
            .map_err(system)?;
        lin.set_base_weight(merged);
    }
    Ok(())
}

/// Restarts every LoRA adapter of `model` for link `link`: A from the init (its own seeded
/// stream per link), B = 0.
fn restart(model: &mut Llama, init: LoraInit, seed: u64, link: usize) -> Result<(), RunError> {
    for (_, lin) in model.linears_mut() {
        let Some(lora) = lin.lora() else { continue };
        let (r, in_f) = lora.a.dims2().map_err(system)?;
        let a = lora_a(
            r,
            in_f,
            init,
            seed,
            &format!("chain/{link}/{}", lora.key),
            lora.a.device(),
        )
        .and_then(|a| a.to_dtype(lora.a.dtype()))
        .map_err(system)?;
        lora.a.set(&a).map_err(system)?;
        lora.b
            .set(&lora.b.zeros_like().map_err(system)?)
            .map_err(system)?;
    }
    Ok(())
}

fn save_chain(dir: &Path, links: &[Link]) -> Result<(), RunError> {
    let mut all = BTreeMap::new();
    for (i, link) in links.iter().enumerate() {
        for (k, t) in link {
            all.insert(format!("link{i}.{k}"), t.clone());
        }
    }
    let meta = HashMap::from([("links".to_string(), links.len().to_string())]);
    safetensors::tensor::serialize_to_file(&all, Some(meta), &dir.join(CHAIN_FILE))
        .map_err(|e| system(format!("{}: {e}", dir.join(CHAIN_FILE).display())))
}

fn load_chain(dir: &Path, model: &Llama) -> Result<Vec<Link>, RunError> {
    let path = dir.join(CHAIN_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(&path).map_err(|e| system(format!("{}: {e}", path.display())))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| user(format!("{}: {e}", path.display())))?;
    let n: usize = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("links"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| user(format!("{}: no link count", path.display())))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, model.device())
        .map_err(|e| user(format!("{}: {e}", path.display())))?;
    let mut links = vec![Link::new(); n];
    for (k, t) in tensors {
        let (head, key) = k
            .split_once('.')
            .ok_or_else(|| user(format!("{}: bad key {k}", path.display())))?;
        let i: usize = head
            .strip_prefix("link")
            .and_then(|i| i.parse().ok())
            .filter(|i| *i < n)
            .ok_or_else(|| user(format!("{}: bad key {k}", path.display())))?;
        links[i].insert(key.to_string(), t);
    }
    Ok(links)
}

/// The chain and the current link as one LoRA: factors concatenated along the rank.
fn combined(links: &[Link], current: &Link) -> Result<Link, RunError> {
    let mut out = Link::new();
    for key in current.keys() {
        let dim = if key.ends_with("lora_A.weight") { 0 } else { 1 };
        let parts: Vec<&Tensor> = links
            .iter()
            .map(|l| l.get(key))
            .chain(std::iter::once(current.get(key)))
            .collect::<Option<_>>()
            .ok_or_else(|| system(format!("a chain link lacks `{key}`")))?;
        out.insert(key.clone(), Tensor::cat(&parts, dim).map_err(system)?);
    }
    Ok(out)
}

/// What a chain run needs besides the agent's plumbing.
pub(super) struct Chain<'a> {
    pub model: &'a mut Llama,
    pub adapters: &'a AdapterSet,
    pub train: Loader,
    pub eval: Option<Loader>,
    pub config: TrainConfig,
    pub every: u64,
    pub init: LoraInit,
    pub seed: u64,
    pub base_model: &'a str,
}

/// Runs a chain of LoRA for the leased job (see the module docs); reports like `drive`.
pub(super) fn drive(
    chain: Chain<'_>,
    inputs: &JobInputs,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let Chain {
        model,
        adapters,
        train,
        eval,
        config,
        every,
        init,
        seed,
        base_model,
    } = chain;
    let total = config.max_steps;
    let mut links = match &inputs.resume_from {
        Some(dir) => load_chain(dir, model)?,
        None => Vec::new(),
    };
    for link in &links {
        merge(model, link)?;
    }
    let checkpoints = inputs.work_dir.join("checkpoints");
    let mut loaders = Some((train, eval));
    let mut resume = inputs.resume_from.clone();
    let mut step = 0;
    loop {
        let end = total.min((links.len() as u64 + 1) * every);
        let (train, eval) = loaders
            .take()
            .ok_or_else(|| system("the chain lost its data loaders"))?;
        let cfg = TrainConfig {
            max_steps: end,
            ..config.clone()
        };
        let outcome;
        {
            let mut trainer =
                Trainer::new(&*model, adapters, train, eval, cfg).map_err(classify_error)?;
            match resume.take() {
                Some(dir) => trainer.resume(&dir).map_err(classify_error)?,
                None => trainer.start_at(step),
            }
            report_base_eval(&trainer, reporter)?;
            let done = &links;
            outcome = trainer
                .run(control, Some(&checkpoints), &mut |event| {
                    if let crate::engine::trainer::Event::Checkpoint { dir, .. } = event
                        && let Err(e) = save_chain(dir, done)
                    {
                        tracing::warn!("checkpoint without its chain: {e}");
                        return;
                    }
                    report(event, total, reporter)
                })
                .map_err(classify_error)?;
            step = trainer.step();
            loaders = Some(trainer.into_loaders());
        }
        match outcome {
            Outcome::Completed { .. } if step < total => {
                // The link is done: fold it into the base and start the next one. A copy:
                // the set's tensors share storage with the vars the restart overwrites.
                let link = adapters
                    .tensors()
                    .into_iter()
                    .map(|(k, t)| t.copy().map(|t| (k, t)))
                    .collect::<Result<Link, _>>()
                    .map_err(system)?;
                merge(model, &link)?;
                links.push(link);
                restart(model, init, seed, links.len())?;
                tracing::debug!(links = links.len(), step, "chain of LoRA: link merged");
            }
            other => {
                let export = |dir: &Path| {
                    let set = adapters;
                    let all = combined(&links, &set.tensors())?;
                    let cfg = set.config();
                    let n = links.len() + 1;
                    let r = cfg.r * n;
                    // PEFT scales by alpha/r (rsLoRA: alpha/√r): keep each link's scale.
                    let alpha = if cfg.use_rslora {
                        cfg.scale() * (r as f64).sqrt()
                    } else {
                        cfg.scale() * r as f64
                    };
                    export::save_lora_tensors(dir, set, &all, r, alpha, base_model, "CAUSAL_LM")
                        .map_err(system)
                };
                return finish(other, inputs, control, &export);
            }
        }
    }
}
