//! Merge jobs on the runner: three real LoRA adapters of the tiny model, trained by the
//! runner, merged by the runner, measured on the same validation file.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use tuna_proto::v1 as pb;
use tuna_spec::metrics;

use super::{Recorder, tiny_inputs, tiny_spec};
use crate::agent::{Control, JobRunner, RunOutcome};
use crate::engine::export::read_lora;
use crate::engine::merge::model_stock_ratio;
use crate::runner::EngineRunner;

/// The last value of `name` a run reported.
fn last(rec: &Recorder, name: &str) -> Option<f64> {
    rec.0.iter().rev().find_map(|p| p.values.get(name).copied())
}

/// Trains a causal-LM LoRA on the tiny model at learning rate `lr` (same seed, same init)
/// and returns its adapter folder and final eval loss.
fn trial(dir: &std::path::Path, name: &str, lr: f64) -> (PathBuf, f64) {
    let mut spec = tiny_spec("causal_lm", "", 24);
    let h = spec.hyperparameters.as_mut().unwrap();
    h.learning_rate = Some(lr);
    h.eval_every = Some(24);
    spec.method.as_mut().unwrap().lora.as_mut().unwrap().dropout = Some(0.0);
    let mut inputs = tiny_inputs(dir, name, spec, None);
    inputs.validation_file = inputs.training_file.clone();
    inputs.validation_format = inputs.training_format;
    let control = Control::new();
    let mut rec = Recorder::default();
    let out = EngineRunner.run(&inputs, &control, &mut rec).unwrap();
    let RunOutcome::Finished { adapter_dir, .. } = out else {
        panic!("{out:?}")
    };
    (adapter_dir, last(&rec, metrics::EVAL_LOSS).unwrap())
}

fn merge_spec(method: &str, rank: i32) -> pb::JobSpec {
    pb::JobSpec {
        base_model: "tiny".into(),
        task: "merge".into(),
        merge: Some(pb::Merge {
            sources: vec!["job_a".into(), "job_b".into(), "job_c".into()],
            method: method.into(),
            rank,
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            batch_size: Some(2),
            seed: Some(11),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `s·B·A` of every module of an adapter folder, by PEFT module key.
fn deltas(dir: &std::path::Path) -> Vec<(String, Tensor)> {
    let f = read_lora(dir).unwrap();
    let scale = f.config.scale();
    let mut keys: Vec<&String> = f
        .tensors
        .keys()
        .filter(|k| k.ends_with(".lora_A.weight"))
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let module = k.trim_end_matches(".lora_A.weight").to_string();
            let a = f.tensors[k].to_dtype(DType::F64).unwrap();
            let b = f.tensors[&format!("{module}.lora_B.weight")]
                .to_dtype(DType::F64)
                .unwrap();
            (module, (b.matmul(&a).unwrap() * scale).unwrap())
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn a_model_stock_merge_of_three_trials_is_the_papers_merge_and_evaluates_no_worse_than_their_mean()
{
    let dir = tempfile::tempdir().unwrap();
    let trials: Vec<(PathBuf, f64)> = [("trial-a", 5e-3), ("trial-b", 1e-2), ("trial-c", 2e-2)]
        .into_iter()
        .map(|(name, lr)| trial(dir.path(), name, lr))
        .collect();

    let mut results = Vec::new();
    for method in ["model_stock", "average"] {
        let mut inputs = tiny_inputs(
            dir.path(),
            &format!("merge-{method}"),
            merge_spec(method, 0),
            None,
        );
        inputs.validation_file = inputs.training_file.take();
        inputs.validation_format = inputs.training_format;
        inputs.training_format = pb::DatasetFormat::Unspecified;
        inputs.merge_sources = trials.iter().map(|(d, _)| d.clone()).collect();
        let control = Control::new();
        let mut rec = Recorder::default();
        let out = EngineRunner.run(&inputs, &control, &mut rec).unwrap();
        let RunOutcome::Finished { adapter_dir, .. } = out else {
            panic!("{out:?}")
        };
        // Rank 0 = the sum of the sources' ranks (3 × 4): the merge is held exactly.
        let error = last(&rec, metrics::MERGE_RECONSTRUCTION_ERROR).unwrap();
        assert!(error < 1e-6, "{method}: reconstruction error {error}");
        assert_eq!(read_lora(&adapter_dir).unwrap().config.r, 12);

        // The exported adapter's delta is the rule applied to the sources' deltas.
        let sources: Vec<Vec<(String, Tensor)>> = trials.iter().map(|(d, _)| deltas(d)).collect();
        let merged = deltas(&adapter_dir);
        assert_eq!(merged.len(), sources[0].len());
        let mut ratios = Vec::new();
        for (m, (module, got)) in merged.iter().enumerate() {
            let per: Vec<Vec<f64>> = sources.iter().map(|s| flat(&s[m].1)).collect();
            assert!(sources.iter().all(|s| &s[m].0 == module));
            let t = if method == "model_stock" {
                model_stock_ratio(&per)
            } else {
                1.0
            };
            ratios.push(t);
            let got = flat(got);
            let scale = got.iter().map(|x| x.abs()).fold(0.0, f64::max);
            for (p, g) in got.iter().enumerate() {
                let want = t * per.iter().map(|d| d[p]).sum::<f64>() / 3.0;
                assert!(
                    (g - want).abs() <= 1e-5 * scale.max(1e-3),
                    "{module}[{p}]: {g} vs {want}"
                );
            }
        }
        if method == "model_stock" {
            let mean_t = ratios.iter().sum::<f64>() / ratios.len() as f64;
            let reported = last(&rec, metrics::MODEL_STOCK_RATIO).unwrap();
            assert!((reported - mean_t).abs() < 1e-9, "{reported} vs {mean_t}");
        }
        results.push((method, last(&rec, metrics::EVAL_LOSS).unwrap()));
    }
    let losses: Vec<f64> = trials.iter().map(|(_, l)| *l).collect();
    let mean = losses.iter().sum::<f64>() / 3.0;
    println!(
        "merge of three tiny-model LoRA trials (eval loss): trials {:.4} {:.4} {:.4} (mean {mean:.4}); {} {:.4}; {} {:.4}",
        losses[0], losses[1], losses[2], results[0].0, results[0].1, results[1].0, results[1].1
    );
    let (_, stock) = results[0];
    assert!(
        stock <= mean,
        "model stock {stock} > mean of the trials {mean}"
    );
}

#[test]
fn a_truncated_merge_reports_its_error_and_a_dora_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = trial(dir.path(), "ta", 1e-2).0;
    let b = trial(dir.path(), "tb", 3e-2).0;
    let mut spec = merge_spec("ties", 2);
    spec.merge.as_mut().unwrap().sources.truncate(2);
    let mut inputs = tiny_inputs(dir.path(), "merge-ties", spec.clone(), None);
    inputs.validation_file = inputs.training_file.take();
    inputs.validation_format = inputs.training_format;
    inputs.merge_sources = vec![a.clone(), b];
    let control = Control::new();
    let mut rec = Recorder::default();
    let out = EngineRunner.run(&inputs, &control, &mut rec).unwrap();
    let RunOutcome::Finished { adapter_dir, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(read_lora(&adapter_dir).unwrap().config.r, 2);
    let error = last(&rec, metrics::MERGE_RECONSTRUCTION_ERROR).unwrap();
    assert!(error > 0.0 && error < 1.0, "ties at rank 2: {error}");
    assert!(last(&rec, metrics::EVAL_LOSS).unwrap().is_finite());

    // A DoRA adapter is not a delta: the merge fails as the user's error, naming the source.
    let cfg = a.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let mut inputs = tiny_inputs(dir.path(), "merge-dora", spec, None);
    inputs.training_file = None;
    inputs.merge_sources = vec![a, adapter_dir];
    let err = EngineRunner
        .run(&inputs, &Control::new(), &mut Recorder::default())
        .unwrap_err();
    assert!(
        matches!(&err, crate::agent::RunError::User(m) if m.contains("job_a") && m.contains("DoRA")),
        "{err:?}"
    );
}

/// lo-fi on the runner: three shards of the data from the same init, averaged by the merge
/// step, against one run over all the data with the same spec (`max_steps`) but one replica:
/// as in lo-fi (Wortsman et al. 2022), each shard runs the job's steps on its share.
#[test]
fn lofi_shards_average_to_within_five_percent_of_one_run_of_the_same_spec() {
    use crate::agent::Part;
    let dir = tempfile::tempdir().unwrap();
    let steps = 48;
    let run = |name: &str, replicas: i32, max_steps: i64, part: Part, sources: Vec<PathBuf>| {
        let mut spec = tiny_spec("causal_lm", "", max_steps);
        spec.replicas = replicas;
        spec.hyperparameters.as_mut().unwrap().eval_every = Some(max_steps);
        let mut inputs = tiny_inputs(dir.path(), name, spec, None);
        inputs.validation_file = inputs.training_file.clone();
        inputs.validation_format = inputs.training_format;
        inputs.part = part;
        inputs.merge_sources = sources;
        let mut rec = Recorder::default();
        let out = EngineRunner
            .run(&inputs, &Control::new(), &mut rec)
            .unwrap();
        let RunOutcome::Finished { adapter_dir, .. } = out else {
            panic!("{out:?}")
        };
        (adapter_dir, rec)
    };
    let shards: Vec<(PathBuf, Recorder)> = (0..3)
        .map(|index| {
            run(
                &format!("shard-{index}"),
                3,
                steps,
                Part::Shard { index, count: 3 },
                vec![],
            )
        })
        .collect();
    let (merged_dir, merged) = run(
        "lofi",
        3,
        steps,
        Part::Combine,
        shards.iter().map(|(d, _)| d.clone()).collect(),
    );
    let (_, single) = run("single", 1, steps, Part::Whole, vec![]);
    let lofi = last(&merged, metrics::EVAL_LOSS).unwrap();
    let whole = last(&single, metrics::EVAL_LOSS).unwrap();
    let per_shard: Vec<f64> = (0..3)
        .map(|i| last(&merged, &metrics::source_eval_loss(i)).unwrap())
        .collect();
    // Each shard's eval, measured by the merge step, is the one its own run reported.
    for (i, (_, rec)) in shards.iter().enumerate() {
        let own = last(rec, metrics::EVAL_LOSS).unwrap();
        assert!(
            (own - per_shard[i]).abs() < 1e-4,
            "shard {i}: {own} vs {}",
            per_shard[i]
        );
    }
    println!(
        "lo-fi (3 shards × {steps} steps) eval loss {lofi:.4} (shards {:.4} {:.4} {:.4}) vs one run of {steps} steps {whole:.4}",
        per_shard[0], per_shard[1], per_shard[2]
    );
    assert_eq!(read_lora(&merged_dir).unwrap().config.r, 12);
    assert!(last(&merged, metrics::MERGE_RECONSTRUCTION_ERROR).unwrap() < 1e-6);
    assert!(
        (lofi - whole).abs() <= 0.05 * whole,
        "lo-fi {lofi} vs one run {whole}"
    );
}
