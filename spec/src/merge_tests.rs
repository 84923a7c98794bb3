use tuna_proto::v1 as pb;

use super::*;

fn merge(method: &str) -> pb::JobSpec {
    pb::JobSpec {
        base_model: "tiny".into(),
        task: "merge".into(),
        merge: Some(pb::Merge {
            sources: vec!["job_a".into(), "job_b".into(), "job_c".into()],
            method: method.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn refused(p: &pb::JobSpec) -> Vec<String> {
    match JobSpec::from_proto(Some(p)) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(v) => v.into_iter().map(|v| v.field).collect(),
    }
}

#[test]
fn every_merge_method_round_trips_with_its_defaults() {
    for method in MergeMethod::ALL {
        let spec = match JobSpec::from_proto(Some(&merge(method.as_str()))) {
            Ok(s) => s,
            Err(v) => panic!("{method}: {v:?}"),
        };
        let m = spec.merge.clone().unwrap();
        assert_eq!(m.method, *method);
        assert_eq!(m.rank, None);
        assert_eq!(m.weights.len(), if method.weighted() { 3 } else { 0 });
        assert_eq!(m.density.is_some(), *method == MergeMethod::Ties);
        assert!(matches!(spec.plan(), Ok(Plan::Merge { .. })));
        let wire = spec.to_proto();
        assert!(wire.method.is_none(), "a merge's method is implied");
        assert_eq!(JobSpec::from_proto(Some(&wire)).ok(), Some(spec.clone()));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }
}

#[test]
fn bad_merges_are_refused_naming_the_field() {
    let mut p = merge("ties");
    p.training_file = "file_1".into();
    assert_eq!(refused(&p), ["spec.training_file"]);

    let mut p = merge("average");
    p.merge.as_mut().unwrap().sources.truncate(1);
    assert_eq!(refused(&p), ["spec.merge.sources"]);

    let mut p = merge("average");
    p.merge.as_mut().unwrap().sources[2] = "job_a".into();
    assert_eq!(refused(&p), ["spec.merge.sources[2]"]);

    let mut p = merge("average");
    p.merge.as_mut().unwrap().weights = vec![1.0, 2.0, 3.0];
    assert_eq!(refused(&p), ["spec.merge.weights"]);

    let mut p = merge("task_arithmetic");
    p.merge.as_mut().unwrap().weights = vec![1.0, 2.0];
    assert_eq!(refused(&p), ["spec.merge.weights"]);

    let mut p = merge("task_arithmetic");
    p.merge.as_mut().unwrap().weights = vec![1.0, f64::NAN, 11.0];
    assert_eq!(
        refused(&p),
        ["spec.merge.weights[1]", "spec.merge.weights[2]"]
    );

    let mut p = merge("ties");
    p.merge.as_mut().unwrap().density = Some(0.0);
    assert_eq!(refused(&p), ["spec.merge.density"]);

    let mut p = merge("model_stock");
    p.merge.as_mut().unwrap().density = Some(0.5);
    assert_eq!(refused(&p), ["spec.merge.density"]);

    let mut p = merge("model_stock");
    p.merge.as_mut().unwrap().rank = -1;
    assert_eq!(refused(&p), ["spec.merge.rank"]);

    let mut p = merge("soup");
    p.merge.as_mut().unwrap().method = "soup".into();
    assert_eq!(refused(&p), ["spec.merge.method"]);

    let mut p = merge("average");
    p.method = Some(pb::Method {
        r#type: "ia3".into(),
        ..Default::default()
    });
    assert_eq!(refused(&p), ["spec.method"]);

    let mut p = merge("average");
    p.merge = None;
    assert_eq!(refused(&p), ["spec.merge"]);

    // A training task must not carry a merge.
    let mut p = merge("average");
    p.task = "causal_lm".into();
    p.training_file = "file_1".into();
    p.method = Some(pb::Method {
        r#type: "lora".into(),
        ..Default::default()
    });
    assert_eq!(refused(&p), ["spec.merge"]);
}

#[test]
fn a_merge_can_export_the_merged_model() {
    let mut p = merge("average");
    p.export_merged = true;
    p.merged_dtype = "bf16".into();
    let spec = JobSpec::from_proto(Some(&p)).unwrap();
    assert_eq!(spec.export_merged, Some(MergedDtype::Bf16));
}

fn lofi(replicas: i32, method: &str, task: &str) -> pb::JobSpec {
    pb::JobSpec {
        base_model: "tiny".into(),
        training_file: "file_1".into(),
        task: task.into(),
        method: Some(pb::Method {
            r#type: method.into(),
            ..Default::default()
        }),
        replicas,
        ..Default::default()
    }
}

#[test]
fn lofi_replicas_round_trip_and_are_for_lora_decoders() {
    for n in [0, 1] {
        let spec = JobSpec::from_proto(Some(&lofi(n, "lora", ""))).unwrap();
        assert_eq!(spec.replicas, 1);
        // An old row (no field) and a one-replica spec serialize alike.
        assert!(!serde_json::to_string(&spec).unwrap().contains("replicas"));
    }
    for task in ["causal_lm", "preference"] {
        let spec = JobSpec::from_proto(Some(&lofi(3, "lora", task))).unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(JobSpec::from_proto(Some(&spec.to_proto())).unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }
    assert_eq!(refused(&lofi(65, "lora", "")), ["spec.replicas"]);
    assert_eq!(refused(&lofi(-1, "lora", "")), ["spec.replicas"]);
    assert_eq!(refused(&lofi(2, "dora", "")), ["spec.replicas"]);
    assert_eq!(refused(&lofi(2, "ia3", "")), ["spec.replicas"]);
    assert_eq!(
        refused(&lofi(2, "lora", "classification")),
        ["spec.replicas"]
    );
}
