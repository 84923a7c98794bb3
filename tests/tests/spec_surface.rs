//! The spec-surface conformance test: every task × method × LoRA init value the API's names
//! admit, every schedule per task, every optimizer (with and without `auto_learning_rate`)
//! per task × method, the prompt-loss weight per task, every preference loss per method, and a
//! merged export per task × method either trains on a real worker or
//! is refused at `CreateJob` with `INVALID_ARGUMENT` naming the field. Nothing accepted may
//! fail on the worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tuna_client::{Client, ClientError, pb};
use tuna_e2e::ServerProcess;
use tuna_spec::{JobSpec, LoraInit, MethodKind, Optimizer, PreferenceLoss, Schedule, Task};
use tuna_worker::engine::model::bert::TinyBertSpec;
use tuna_worker::engine::model::tiny::TinySpec;

fn causal_data() -> String {
    (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\":\"{}+{}=\",\"completion\":\"{}\"}}\n",
                i % 4,
                i / 4,
                i % 4 + i / 4
            )
        })
        .collect()
}

fn pref_data() -> String {
    (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\":\"{}+{}=\",\"chosen\":\"{}\",\"rejected\":\"{}\"}}\n",
                i % 4,
                i / 4,
                i % 4 + i / 4,
                i % 4 + i / 4 + 1
            )
        })
        .collect()
}

fn class_data() -> String {
    [
        "good fun",
        "great joy",
        "lovely day",
        "bad pain",
        "awful mess",
        "dull pain",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| {
        format!(
            "{{\"text\":\"{t}\",\"label\":\"{}\"}}\n",
            if i < 3 { "pos" } else { "neg" }
        )
    })
    .collect()
}

async fn upload(client: &Client, dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    client
        .upload_file(
            &path,
            pb::FilePurpose::Dataset,
            pb::DatasetFormat::Unspecified,
        )
        .await
        .unwrap()
        .id
}

fn spec(
    task: Task,
    method: MethodKind,
    init: LoraInit,
    schedule: Schedule,
    files: &Files,
) -> pb::JobSpec {
    let (model, data) = match task {
        Task::CausalLm => ("llama", &files.causal),
        Task::Classification => ("bert", &files.class),
        Task::Preference => ("llama", &files.pref),
        // Refused: a merge names no training file or method (tests/tests/merges.rs runs them).
        Task::Merge => ("llama", &files.causal),
    };
    pb::JobSpec {
        base_model: model.into(),
        training_file: data.clone(),
        validation_file: data.clone(),
        task: task.as_str().into(),
        method: Some(pb::Method {
            r#type: method.as_str().into(),
            lora: Some(pb::LoraParams {
                r: Some(2),
                init: init.as_str().into(),
                ..Default::default()
            }),
            prompt_tuning: Some(pb::PromptTuningParams {
                num_virtual_tokens: Some(2),
            }),
            prefix_tuning: Some(pb::PrefixTuningParams {
                num_virtual_tokens: Some(2),
            }),
            ia3: None,
            // One layer at a time, redrawn every step: both steps exercise a draw.
            lisa: Some(pb::LisaParams {
                layers: Some(1),
                interval: Some(1),
            }),
        }),
        hyperparameters: Some(pb::Hyperparameters {
            learning_rate: Some(1e-2),
            max_steps: Some(2),
            batch_size: Some(2),
            schedule: schedule.as_str().into(),
            checkpoint_every: Some(0),
            max_seq_len: Some(32),
            seed: Some(3),
            ..Default::default()
        }),
        preference: (task == Task::Preference).then(|| pb::Preference {
            loss: PreferenceLoss::Dpo.as_str().into(),
            ..Default::default()
        }),
        max_attempts: 1,
        ..Default::default()
    }
}

struct Files {
    causal: String,
    class: String,
    pref: String,
}

/// What the matrix has seen: refusals, and the jobs created per distinct typed spec.
#[derive(Default)]
struct Surface {
    refused: usize,
    runs: BTreeMap<String, (String, String)>,
}

impl Surface {
    /// Creates the job when the spec accepts it (once per distinct typed spec), or checks
    /// that the API refuses it naming every field the spec names.
    async fn check(
        &mut self,
        client: &Client,
        combo: String,
        p: pb::JobSpec,
        task: Task,
        method: MethodKind,
    ) {
        match JobSpec::from_proto(Some(&p)) {
            Err(violations) => {
                let Err(ClientError::Rpc(s)) = client.create_job(p, None).await else {
                    panic!("{combo}: the API accepted what the spec refuses")
                };
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{combo}");
                for v in &violations {
                    assert!(s.message().contains(&v.field), "{combo}: {}", s.message());
                }
                println!("refused: {combo}: {}", s.message());
                self.refused += 1;
            }
            // BitFit trains bias parameters; the tiny Llama (like most Llama checkpoints)
            // has none, which the server reads from its headers.
            Ok(_) if task != Task::Classification && method == MethodKind::Bitfit => {
                let Err(ClientError::Rpc(s)) = client.create_job(p, None).await else {
                    panic!("{combo}: bitfit accepted for a model without biases")
                };
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{combo}");
                assert!(
                    s.message().contains("spec.method.type") && s.message().contains("bias"),
                    "{combo}: {}",
                    s.message()
                );
                println!("refused (model): {combo}: {}", s.message());
                self.refused += 1;
            }
            Ok(typed) => {
                // Combinations that mean the same job (an init of a method without LoRA
                // factors) run once.
                let key = serde_json::to_string(&typed).unwrap();
                if self.runs.contains_key(&key) {
                    return;
                }
                let job = client
                    .create_job(p, None)
                    .await
                    .unwrap_or_else(|e| panic!("{combo}: {e}"));
                self.runs.insert(key, (combo, job.id));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_spec_trains_on_a_worker_and_every_other_is_refused_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--embedded-worker"]);
    let client = Client::connect(&server.url, None).await.unwrap();
    TinySpec::default()
        .write(&dir.path().join("llama"), 3)
        .unwrap();
    TinyBertSpec::default()
        .write(&dir.path().join("bert"), 3)
        .unwrap();
    client
        .register_model("llama", &dir.path().join("llama"))
        .await
        .unwrap();
    client
        .register_model("bert", &dir.path().join("bert"))
        .await
        .unwrap();
    let files = Files {
        causal: upload(&client, dir.path(), "causal.jsonl", &causal_data()).await,
        class: upload(&client, dir.path(), "class.jsonl", &class_data()).await,
        pref: upload(&client, dir.path(), "pref.jsonl", &pref_data()).await,
    };

    // A dataset whose validated format the task cannot train is refused at CreateJob too.
    let mut mismatch = spec(
        Task::CausalLm,
        MethodKind::Lora,
        LoraInit::Default,
        Schedule::Cosine,
        &files,
    );
    mismatch.training_file = files.class.clone();
    match client.create_job(mismatch, None).await {
        Err(ClientError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(
                s.message().contains("spec.training_file"),
                "{}",
                s.message()
            );
        }
        other => panic!("a classification file for a causal_lm job: {other:?}"),
    }

    let mut seen = Surface::default();
    for task in Task::ALL {
        for method in MethodKind::ALL {
            for init in LoraInit::ALL {
                let combo = format!("{task} {method} init={init}");
                let p = spec(*task, *method, *init, Schedule::Cosine, &files);
                seen.check(&client, combo, p, *task, *method).await;
            }
            for optimizer in Optimizer::ALL {
                for auto in [false, true] {
                    let combo = format!("{task} {method} optimizer={optimizer} auto={auto}");
                    let mut p = spec(*task, *method, LoraInit::Default, Schedule::Cosine, &files);
                    let h = p.hyperparameters.get_or_insert_with(Default::default);
                    h.optimizer = optimizer.as_str().into();
                    h.auto_learning_rate = auto;
                    if auto {
                        h.learning_rate = None;
                    } else if optimizer.is_learning_rate_free() {
                        h.learning_rate = Some(1.0);
                    }
                    seen.check(&client, combo, p, *task, *method).await;
                }
            }
        }
        for schedule in Schedule::ALL {
            let combo = format!("{task} lora schedule={schedule}");
            let mut p = spec(
                *task,
                MethodKind::Lora,
                LoraInit::Default,
                *schedule,
                &files,
            );
            p.hyperparameters
                .get_or_insert_with(Default::default)
                .warmup_steps = Some(1);
            seen.check(&client, combo, p, *task, MethodKind::Lora).await;
        }
        // A chain of LoRA, a link per step.
        {
            let combo = format!("{task} lora chain_every=1");
            let mut p = spec(
                *task,
                MethodKind::Lora,
                LoraInit::Default,
                Schedule::Cosine,
                &files,
            );
            let m = p.method.as_mut().unwrap();
            m.lora.as_mut().unwrap().chain_every = Some(1);
            seen.check(&client, combo, p, *task, MethodKind::Lora).await;
        }
        for weight in [0.5, 1.0] {
            let combo = format!("{task} lora prompt_loss_weight={weight}");
            let mut p = spec(
                *task,
                MethodKind::Lora,
                LoraInit::Default,
                Schedule::Cosine,
                &files,
            );
            p.hyperparameters
                .get_or_insert_with(Default::default)
                .prompt_loss_weight = Some(weight);
            seen.check(&client, combo, p, *task, MethodKind::Lora).await;
        }
    }
    // A merged export per task and method, in bf16.
    for task in Task::ALL {
        for method in MethodKind::ALL {
            let combo = format!("{task} {method} export_merged=bf16");
            let mut p = spec(*task, *method, LoraInit::Default, Schedule::Cosine, &files);
            p.export_merged = true;
            p.merged_dtype = "bf16".into();
            seen.check(&client, combo, p, *task, *method).await;
        }
    }
    // Every preference loss with every method and its knobs.
    for loss in PreferenceLoss::ALL {
        for method in MethodKind::ALL {
            let combo = format!("preference {method} loss={loss}");
            let mut p = spec(
                Task::Preference,
                *method,
                LoraInit::Default,
                Schedule::Cosine,
                &files,
            );
            p.preference = Some(pb::Preference {
                loss: loss.as_str().into(),
                beta: Some(0.5),
                label_smoothing: None,
            });
            seen.check(&client, combo, p, Task::Preference, *method)
                .await;
        }
        let combo = format!("preference lora loss={loss} label_smoothing=0.2");
        let mut p = spec(
            Task::Preference,
            MethodKind::Lora,
            LoraInit::Default,
            Schedule::Cosine,
            &files,
        );
        p.preference = Some(pb::Preference {
            loss: loss.as_str().into(),
            beta: None,
            label_smoothing: Some(0.2),
        });
        seen.check(&client, combo, p, Task::Preference, MethodKind::Lora)
            .await;
    }
    let Surface { refused, runs } = seen;
    assert!(
        refused > 0 && runs.len() >= 60,
        "{refused} refused, {} ran",
        runs.len()
    );

    let deadline = Instant::now() + Duration::from_secs(1200);
    for (combo, id) in runs.values() {
        let job = loop {
            let job = client.get_job(id).await.unwrap();
            if tuna_client::is_terminal(job.state()) {
                break job;
            }
            assert!(
                Instant::now() < deadline,
                "{combo}: still {:?}",
                job.state()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            job.state(),
            pb::JobState::Succeeded,
            "{combo}: {:?}",
            job.failure
        );
        println!("trained: {combo} ({id})");
    }
    println!(
        "{} combinations trained, {refused} refused at CreateJob",
        runs.len()
    );
}
