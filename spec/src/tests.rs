use tuna_proto::v1 as pb;

use super::*;

fn minimal() -> pb::JobSpec {
    pb::JobSpec {
        base_model: "tiny".into(),
        training_file: "file_1".into(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with(task: &str, method: &str, init: &str) -> pb::JobSpec {
    let mut p = minimal();
    p.task = task.into();
    let m = p.method.get_or_insert_with(Default::default);
    m.r#type = method.into();
    m.lora = Some(pb::LoraParams {
        init: init.into(),
        ..Default::default()
    });
    p
}

fn fields(err: Vec<FieldViolation>) -> Vec<String> {
    err.into_iter().map(|v| v.field).collect()
}

fn ok(p: &pb::JobSpec) -> JobSpec {
    match JobSpec::from_proto(Some(p)) {
        Ok(s) => s,
        Err(v) => panic!("refused: {v:?}"),
    }
}

#[test]
fn defaults_are_filled_in_and_survive_a_proto_round_trip() {
    let spec = ok(&minimal());
    assert_eq!(spec.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(spec.version, SPEC_VERSION);
    let lora = spec.method.lora().cloned().unwrap();
    assert_eq!((lora.r, lora.alpha), (8, 16.0));
    assert_eq!(lora.init, LoraInit::Default);
    assert_eq!(
        lora.target_modules, None,
        "the default is left to the model"
    );
    let again = ok(&spec.to_proto());
    assert_eq!(spec, again);
}

#[test]
fn every_accepted_combination_round_trips_through_proto_and_json() {
    for task in Task::ALL {
        for method in MethodKind::ALL {
            for init in LoraInit::ALL {
                for schedule in Schedule::ALL {
                    let mut p = with(task.as_str(), method.as_str(), init.as_str());
                    p.hyperparameters = Some(pb::Hyperparameters {
                        schedule: schedule.as_str().into(),
                        ..Default::default()
                    });
                    let Ok(spec) = JobSpec::from_proto(Some(&p)) else {
                        continue;
                    };
                    assert_eq!(ok(&spec.to_proto()), spec);
                    let json = serde_json::to_string(&spec).unwrap();
                    let back: JobSpec = serde_json::from_str(&json).unwrap();
                    assert_eq!(back, spec, "{json}");
                }
            }
        }
    }
}

#[test]
fn every_bad_field_is_named() {
    let mut p = minimal();
    p.base_model = " ".into();
    p.hyperparameters = Some(pb::Hyperparameters {
        learning_rate: Some(-1.0),
        ..Default::default()
    });
    p.method.as_mut().unwrap().lora = Some(pb::LoraParams {
        r: Some(0),
        ..Default::default()
    });
    let f = fields(JobSpec::from_proto(Some(&p)).unwrap_err());
    assert!(f.contains(&"spec.base_model".to_string()), "{f:?}");
    assert!(
        f.contains(&"spec.hyperparameters.learning_rate".to_string()),
        "{f:?}"
    );
    assert!(f.contains(&"spec.method.lora.r".to_string()), "{f:?}");
}

#[test]
fn unknown_method_is_rejected_by_name() {
    let mut p = minimal();
    p.method.as_mut().unwrap().r#type = "qlora9".into();
    let err = JobSpec::from_proto(Some(&p)).unwrap_err();
    assert_eq!(err[0].field, "spec.method.type");
    assert!(err[0].description.contains("qlora9"));
}

#[test]
fn untrainable_combinations_are_refused_naming_the_field() {
    let refused = |p: pb::JobSpec| fields(JobSpec::from_proto(Some(&p)).unwrap_err());
    assert_eq!(
        refused(with("classification", "ia3", "")),
        ["spec.method.type"]
    );
    assert_eq!(
        refused(with("classification", "lora", "lora_ga")),
        ["spec.method.lora.init"]
    );
    assert_eq!(
        refused(with("causal_lm", "dora", "pissa")),
        ["spec.method.lora.init"]
    );
    assert_eq!(
        refused(with("causal_lm", "lora", "xavier")),
        ["spec.method.lora.init"]
    );
    // What is accepted has a plan.
    for p in [
        with("causal_lm", "lora", "lora_ga"),
        with("classification", "dora", "gaussian"),
        with("classification", "lora", "pissa"),
    ] {
        assert!(ok(&p).plan().is_ok());
    }
}

#[test]
fn a_version_1_row_keeps_its_meaning() {
    // As stored by the first layout: "gaussian" meant PEFT's default init and the module
    // lists were filled with the causal-LM defaults.
    let v1 = r#"{"base_model":"m","training_file":"file_1","validation_file":null,
        "task":"classification","method":{"type":"lora","lora":{"r":8,"alpha":16.0,
        "dropout":0.0,"target_modules":["q_proj","v_proj"],"use_rslora":false,
        "init":"gaussian","lr_ratio_b":1.0}},"hyperparameters":{"learning_rate":0.0002,
        "epochs":3,"max_steps":null,"batch_size":8,"grad_accumulation":1,"warmup_steps":0,
        "schedule":"cosine","weight_decay":0.0,"max_seq_len":512,"seed":0,"eval_every":0,
        "checkpoint_every":100,"max_grad_norm":1.0},"device":"any","min_memory_bytes":0,
        "priority":0,"max_attempts":3,"labels":{}}"#;
    let spec: JobSpec = serde_json::from_str(v1).unwrap();
    assert_eq!(spec.version, SPEC_VERSION);
    let lora = spec.method.lora().unwrap();
    assert_eq!(lora.init, LoraInit::Default);
    assert_eq!(lora.target_modules, None);
    assert_eq!(spec.hyperparameters.optimizer, Optimizer::AdamW);
    // A version-2 row that chose gaussian keeps it.
    let mut v2 = serde_json::to_value(&spec).unwrap();
    v2["method"]["lora"]["init"] = "gaussian".into();
    let again: JobSpec = serde_json::from_value(v2).unwrap();
    assert_eq!(again.method.lora().unwrap().init, LoraInit::Gaussian);
}

#[test]
fn an_unknown_field_in_a_newer_row_is_ignored() {
    let mut v = serde_json::to_value(ok(&minimal())).unwrap();
    v["some_future_field"] = 3.into();
    let back: Result<JobSpec, _> = serde_json::from_value(v);
    assert!(back.is_ok());
}

#[test]
fn module_lists_and_memory_are_bounded_naming_the_limit() {
    let names: Vec<String> = (0..200_000).map(|i| format!("m{i}")).collect();
    for method in ["lora", "ia3"] {
        let mut p = minimal();
        let m = p.method.as_mut().unwrap();
        m.r#type = method.into();
        if method == "lora" {
            m.lora = Some(pb::LoraParams {
                target_modules: names.clone(),
                ..Default::default()
            });
        } else {
            m.ia3 = Some(pb::Ia3Params {
                target_modules: names.clone(),
            });
        }
        let err = JobSpec::from_proto(Some(&p)).unwrap_err();
        // One violation for the list, not one per entry.
        assert_eq!(err.len(), 1, "{method}: {err:?}");
        assert_eq!(
            err[0].field,
            format!("spec.method.{method}.target_modules"),
            "{err:?}"
        );
        assert!(err[0].description.contains("at most 64"), "{err:?}");
        // Exactly the limit is fine.
        let m = p.method.as_mut().unwrap();
        let at_limit = names[..MAX_TARGET_MODULES].to_vec();
        if method == "lora" {
            m.lora.as_mut().unwrap().target_modules = at_limit;
        } else {
            m.ia3.as_mut().unwrap().target_modules = at_limit;
        }
        ok(&p);
    }
    let mut p = minimal();
    p.resources = Some(pb::Resources {
        min_memory_bytes: i64::MAX,
        ..Default::default()
    });
    let err = JobSpec::from_proto(Some(&p)).unwrap_err();
    assert_eq!(fields(err.clone()), ["spec.resources.min_memory_bytes"]);
    assert!(
        err[0]
            .description
            .contains(&MAX_MIN_MEMORY_BYTES.to_string()),
        "{err:?}"
    );
    p.resources.as_mut().unwrap().min_memory_bytes = MAX_MIN_MEMORY_BYTES;
    ok(&p);
}

fn hyper(h: pb::Hyperparameters) -> pb::JobSpec {
    let mut p = minimal();
    p.hyperparameters = Some(h);
    p
}

#[test]
fn every_optimizer_and_schedule_round_trips_with_its_parameters() {
    for optimizer in Optimizer::ALL {
        for auto in [false, true] {
            for schedule in Schedule::ALL {
                let p = hyper(pb::Hyperparameters {
                    optimizer: optimizer.as_str().into(),
                    auto_learning_rate: auto,
                    schedule: schedule.as_str().into(),
                    prompt_loss_weight: Some(0.5),
                    ..Default::default()
                });
                let Ok(spec) = JobSpec::from_proto(Some(&p)) else {
                    assert!(
                        auto && !optimizer.is_learning_rate_free(),
                        "{optimizer} {auto}"
                    );
                    continue;
                };
                assert_eq!(ok(&spec.to_proto()), spec, "{optimizer} {auto} {schedule}");
                let json = serde_json::to_string(&spec).unwrap();
                assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
            }
        }
    }
    for shape in DecayShape::ALL {
        let spec = ok(&hyper(pb::Hyperparameters {
            schedule: "wsd".into(),
            decay_fraction: Some(0.1),
            decay_shape: shape.as_str().into(),
            min_lr_ratio: Some(0.05),
            ..Default::default()
        }));
        assert_eq!(spec.hyperparameters.decay_shape, *shape);
        assert_eq!(ok(&spec.to_proto()), spec);
    }
}

#[test]
fn learning_rate_defaults_follow_the_optimizer() {
    let h = |o: &str, auto| {
        ok(&hyper(pb::Hyperparameters {
            optimizer: o.into(),
            auto_learning_rate: auto,
            ..Default::default()
        }))
        .hyperparameters
    };
    assert_eq!(h("adamw", false).learning_rate, 2e-4);
    assert_eq!(h("lion", false).learning_rate, 2e-4);
    // A learning-rate-free optimizer's learning rate multiplies its adapted step.
    assert_eq!(h("dog", false).learning_rate, 1.0);
    assert_eq!(h("dadapt_adam", false).learning_rate, 1.0);
    // auto picks DoG unless dadapt_adam is named.
    let auto = h("", true);
    assert_eq!((auto.optimizer, auto.learning_rate), (Optimizer::Dog, 1.0));
    assert!(auto.auto_learning_rate);
    assert_eq!(h("dadapt_adam", true).optimizer, Optimizer::DAdaptAdam);
    // Up to 10 for a multiplier, 1 for a learning rate.
    let lr = |o: &str, v| {
        JobSpec::from_proto(Some(&hyper(pb::Hyperparameters {
            optimizer: o.into(),
            learning_rate: Some(v),
            ..Default::default()
        })))
    };
    assert!(lr("dog", 3.0).is_ok());
    assert_eq!(
        fields(lr("adamw", 3.0).unwrap_err()),
        ["spec.hyperparameters.learning_rate"]
    );
}

#[test]
fn inconsistent_optimizer_and_schedule_settings_are_refused_naming_the_field() {
    let refused =
        |h: pb::Hyperparameters| fields(JobSpec::from_proto(Some(&hyper(h))).unwrap_err());
    assert_eq!(
        refused(pb::Hyperparameters {
            optimizer: "adamw".into(),
            auto_learning_rate: true,
            ..Default::default()
        }),
        ["spec.hyperparameters.optimizer"]
    );
    assert_eq!(
        refused(pb::Hyperparameters {
            auto_learning_rate: true,
            learning_rate: Some(1e-3),
            ..Default::default()
        }),
        ["spec.hyperparameters.learning_rate"]
    );
    assert_eq!(
        refused(pb::Hyperparameters {
            optimizer: "sgd".into(),
            ..Default::default()
        }),
        ["spec.hyperparameters.optimizer"]
    );
    // A schedule parameter another schedule uses is refused, not ignored.
    assert_eq!(
        refused(pb::Hyperparameters {
            schedule: "cosine".into(),
            min_lr_ratio: Some(0.1),
            decay_fraction: Some(0.1),
            decay_shape: "linear".into(),
            ..Default::default()
        }),
        [
            "spec.hyperparameters.min_lr_ratio",
            "spec.hyperparameters.decay_fraction",
            "spec.hyperparameters.decay_shape"
        ]
    );
    for (h, field) in [
        (
            pb::Hyperparameters {
                schedule: "wsd".into(),
                decay_fraction: Some(0.0),
                ..Default::default()
            },
            "spec.hyperparameters.decay_fraction",
        ),
        (
            pb::Hyperparameters {
                schedule: "wsd".into(),
                decay_shape: "exponential".into(),
                ..Default::default()
            },
            "spec.hyperparameters.decay_shape",
        ),
        (
            pb::Hyperparameters {
                schedule: "cosine_with_min_lr".into(),
                min_lr_ratio: Some(1.0),
                ..Default::default()
            },
            "spec.hyperparameters.min_lr_ratio",
        ),
        (
            pb::Hyperparameters {
                zo_epsilon: Some(1e-3),
                ..Default::default()
            },
            "spec.hyperparameters.zo_epsilon",
        ),
        (
            pb::Hyperparameters {
                optimizer: "mezo".into(),
                zo_epsilon: Some(0.0),
                ..Default::default()
            },
            "spec.hyperparameters.zo_epsilon",
        ),
        (
            pb::Hyperparameters {
                prompt_loss_weight: Some(1.5),
                ..Default::default()
            },
            "spec.hyperparameters.prompt_loss_weight",
        ),
        (
            pb::Hyperparameters {
                prompt_loss_weight: Some(f64::NAN),
                ..Default::default()
            },
            "spec.hyperparameters.prompt_loss_weight",
        ),
    ] {
        assert_eq!(refused(h), [field]);
    }
    // A chain of LoRA: lora only, causal_lm only, a fresh init per link.
    for (task, method, init) in [
        ("causal_lm", "dora", ""),
        ("classification", "lora", ""),
        ("causal_lm", "lora", "pissa"),
        ("causal_lm", "lora", "lora_ga"),
    ] {
        let mut p = with(task, method, init);
        p.method
            .as_mut()
            .unwrap()
            .lora
            .as_mut()
            .unwrap()
            .chain_every = Some(10);
        assert_eq!(
            fields(JobSpec::from_proto(Some(&p)).unwrap_err()),
            ["spec.method.lora.chain_every"],
            "{task} {method} {init}"
        );
    }
    let mut p = with("causal_lm", "lora", "gaussian");
    p.method
        .as_mut()
        .unwrap()
        .lora
        .as_mut()
        .unwrap()
        .chain_every = Some(10);
    let spec = ok(&p);
    assert_eq!(spec.method.lora().unwrap().chain_every, Some(10));
    assert_eq!(ok(&spec.to_proto()), spec);
    p.method
        .as_mut()
        .unwrap()
        .lora
        .as_mut()
        .unwrap()
        .chain_every = Some(0);
    assert_eq!(
        fields(JobSpec::from_proto(Some(&p)).unwrap_err()),
        ["spec.method.lora.chain_every"]
    );
    // MeZO would perturb every layer, undoing LISA's sampling.
    let mut p = with("causal_lm", "lisa", "");
    p.hyperparameters = Some(pb::Hyperparameters {
        optimizer: "mezo".into(),
        ..Default::default()
    });
    assert_eq!(
        fields(JobSpec::from_proto(Some(&p)).unwrap_err()),
        ["spec.hyperparameters.optimizer"]
    );
    // Classification has no prompt tokens to weigh.
    let mut p = with("classification", "lora", "");
    p.hyperparameters = Some(pb::Hyperparameters {
        prompt_loss_weight: Some(0.5),
        ..Default::default()
    });
    assert_eq!(
        fields(JobSpec::from_proto(Some(&p)).unwrap_err()),
        ["spec.hyperparameters.prompt_loss_weight"]
    );
}

#[test]
fn defaults_of_the_schedule_parameters() {
    let h = |s: &str| {
        ok(&hyper(pb::Hyperparameters {
            schedule: s.into(),
            ..Default::default()
        }))
        .hyperparameters
    };
    assert_eq!(h("cosine_with_min_lr").min_lr_ratio, DEFAULT_MIN_LR_RATIO);
    let wsd = h("wsd");
    assert_eq!(
        (wsd.min_lr_ratio, wsd.decay_fraction, wsd.decay_shape),
        (0.0, DEFAULT_DECAY_FRACTION, DecayShape::OneMinusSqrt)
    );
    assert_eq!(h("cosine").prompt_loss_weight, 0.0);
}

#[test]
fn preference_knobs_are_validated_and_round_trip() {
    let mut p = with("preference", "lora", "");
    let spec = ok(&p);
    let pref = spec.preference.unwrap();
    assert_eq!(
        (pref.loss, pref.beta, pref.label_smoothing),
        (PreferenceLoss::Dpo, DEFAULT_PREFERENCE_BETA, 0.0)
    );
    assert_eq!(ok(&spec.to_proto()), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);

    let refuse = |p: &pb::JobSpec| fields(JobSpec::from_proto(Some(p)).unwrap_err());
    p.preference = Some(pb::Preference {
        loss: "kto".into(),
        beta: Some(0.0),
        label_smoothing: Some(0.5),
    });
    assert_eq!(
        refuse(&p),
        [
            "spec.preference.loss",
            "spec.preference.beta",
            "spec.preference.label_smoothing"
        ]
    );
    p.preference = Some(pb::Preference {
        loss: "orpo".into(),
        beta: None,
        label_smoothing: Some(0.1),
    });
    assert_eq!(refuse(&p), ["spec.preference.label_smoothing"]);
    // A preference knob on another task, a reference loss without an adapter, a prompt weight.
    let mut q = with("causal_lm", "lora", "");
    q.preference = Some(pb::Preference::default());
    assert_eq!(refuse(&q), ["spec.preference"]);
    assert_eq!(
        refuse(&with("preference", "full", "")),
        ["spec.method.type"]
    );
    assert_eq!(
        refuse(&with("preference", "lora", "pissa")),
        ["spec.method.lora.init"]
    );
    assert_eq!(
        refuse(&with("preference", "lora", "lora_ga")),
        ["spec.method.lora.init"]
    );
    let mut orpo_full = with("preference", "full", "");
    orpo_full.preference = Some(pb::Preference {
        loss: "orpo".into(),
        ..Default::default()
    });
    assert_eq!(ok(&orpo_full).task, Task::Preference);
    let mut w = with("preference", "lora", "");
    w.hyperparameters = Some(pb::Hyperparameters {
        prompt_loss_weight: Some(0.5),
        ..Default::default()
    });
    assert_eq!(refuse(&w), ["spec.hyperparameters.prompt_loss_weight"]);
}

#[test]
fn merged_exports_are_for_decoders_whose_method_folds_into_the_weights() {
    let mut p = with("causal_lm", "lora", "");
    p.export_merged = true;
    assert_eq!(ok(&p).export_merged, Some(MergedDtype::F32));
    p.merged_dtype = "bf16".into();
    let spec = ok(&p);
    assert_eq!(spec.export_merged, Some(MergedDtype::Bf16));
    assert_eq!(ok(&spec.to_proto()), spec);
    let refuse = |p: &pb::JobSpec| fields(JobSpec::from_proto(Some(p)).unwrap_err());
    p.merged_dtype = "fp8".into();
    assert_eq!(refuse(&p), ["spec.merged_dtype"]);
    let mut q = with("causal_lm", "lora", "");
    q.merged_dtype = "bf16".into();
    assert_eq!(refuse(&q), ["spec.merged_dtype"]);
    for (task, method) in [
        ("causal_lm", "prompt_tuning"),
        ("causal_lm", "prefix_tuning"),
        ("classification", "lora"),
    ] {
        let mut r = with(task, method, "");
        r.export_merged = true;
        assert_eq!(refuse(&r), ["spec.export_merged"], "{task} {method}");
    }
}

#[test]
fn the_base_dtype_is_named_validated_and_kept_through_every_encoding() {
    let with = |dtype: &str, method: &str| {
        let mut p = minimal();
        p.method = Some(pb::Method {
            r#type: method.into(),
            ..Default::default()
        });
        p.resources = Some(pb::Resources {
            device: "cuda".into(),
            dtype: dtype.into(),
            ..Default::default()
        });
        p
    };
    assert_eq!(ok(&minimal()).dtype, crate::BaseDtype::Auto);
    let spec = ok(&with("bf16", "lora"));
    assert_eq!(spec.dtype, crate::BaseDtype::Bf16);
    assert_eq!(ok(&spec.to_proto()), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    // A row written before the field existed reads as auto.
    let old = serde_json::to_string(&ok(&minimal())).unwrap();
    assert!(!old.contains("dtype"), "{old}");
    assert_eq!(
        serde_json::from_str::<JobSpec>(&old).unwrap().dtype,
        crate::BaseDtype::Auto
    );
    let err = JobSpec::from_proto(Some(&with("fp8", "lora"))).unwrap_err();
    assert_eq!(fields(err.clone()), ["spec.resources.dtype"]);
    assert!(err[0].description.contains("f32, bf16, f16"), "{err:?}");
    // Trained base weights stay f32.
    for method in ["full", "lisa"] {
        let err = JobSpec::from_proto(Some(&with("f16", method))).unwrap_err();
        assert_eq!(fields(err.clone()), ["spec.resources.dtype"], "{method}");
        assert!(err[0].description.contains("use dtype f32"), "{err:?}");
        ok(&with("f32", method));
    }
}

#[test]
fn gradient_checkpointing_is_for_gradient_trained_causal_lm_jobs() {
    let mut p = minimal();
    p.hyperparameters = Some(pb::Hyperparameters {
        gradient_checkpointing: true,
        ..Default::default()
    });
    let spec = ok(&p);
    assert!(spec.hyperparameters.gradient_checkpointing);
    assert_eq!(ok(&spec.to_proto()), spec);
    let mut mezo = p.clone();
    if let Some(h) = mezo.hyperparameters.as_mut() {
        h.optimizer = "mezo".into();
    }
    let err = JobSpec::from_proto(Some(&mezo)).unwrap_err();
    assert_eq!(fields(err), ["spec.hyperparameters.gradient_checkpointing"]);
    let mut classify = p.clone();
    classify.task = "classification".into();
    let err = JobSpec::from_proto(Some(&classify)).unwrap_err();
    assert_eq!(
        fields(err.clone()),
        ["spec.hyperparameters.gradient_checkpointing"]
    );
    assert!(err[0].description.contains("causal_lm"), "{err:?}");
}
