//! Every method's export, written by the runner, read back by Tuna and written out with Tuna's
//! logits for the HF PEFT / transformers check (`scripts/peft_check.py`).

use std::path::PathBuf;

use tuna_proto::v1 as pb;

use super::{Recorder, tiny_inputs, tiny_spec};
use crate::agent::{Control, JobRunner, RunOutcome};
use crate::runner::EngineRunner;

/// Every method's export, trained by the runner, loads back into a fresh base model and
/// changes its logits. With `TUNA_PEFT_CHECK_DIR` set, the base model, the exports and Tuna's
/// logits stay there for `scripts/peft_check.py`, which loads them in HF PEFT / transformers
/// and compares logits (docs/engine-notes.md §3.7).
#[test]
fn every_method_exports_what_loads_back_with_its_logits_written_for_the_peft_check() {
    use candle_core::{DType, Device, Tensor};

    use crate::engine::adapters::Mode;
    use crate::engine::export::load_adapter;
    use crate::engine::model::Llama;

    let tmp = tempfile::tempdir().unwrap();
    let root = std::env::var_os("TUNA_PEFT_CHECK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root).unwrap();
    let method = |spec: &mut pb::JobSpec, name: &str| {
        spec.method.as_mut().unwrap().r#type = name.into();
    };
    let preference = |loss: &str| {
        let mut s = tiny_spec("preference", "", 3);
        s.preference = Some(pb::Preference {
            loss: loss.into(),
            beta: Some(0.5),
            label_smoothing: None,
        });
        s
    };
    fn hyper(s: &mut pb::JobSpec) -> &mut pb::Hyperparameters {
        s.hyperparameters.get_or_insert_with(Default::default)
    }
    let mut cases: Vec<(&str, pb::JobSpec)> = vec![
        ("lora", tiny_spec("causal_lm", "", 3)),
        ("lora_dpo", preference("dpo")),
        ("lora_ipo", preference("ipo")),
        ("lora_orpo", preference("orpo")),
    ];
    let mut s = tiny_spec("causal_lm", "", 3);
    hyper(&mut s).optimizer = "mezo".into();
    cases.push(("lora_mezo", s));
    // DoG's first steps are tiny by design (it grows its step from r_ε): a few more.
    let mut s = tiny_spec("causal_lm", "", 8);
    hyper(&mut s).auto_learning_rate = true;
    hyper(&mut s).learning_rate = None;
    cases.push(("lora_dog_auto", s));
    let mut s = tiny_spec("causal_lm", "", 4);
    s.method
        .as_mut()
        .unwrap()
        .lora
        .as_mut()
        .unwrap()
        .chain_every = Some(2);
    cases.push(("lora_chain", s));
    for name in [
        "dora",
        "ia3",
        "prompt_tuning",
        "prefix_tuning",
        "full",
        "lisa",
    ] {
        let mut s = tiny_spec("causal_lm", "", 3);
        method(&mut s, name);
        if name == "lisa" {
            s.method.as_mut().unwrap().lisa = Some(pb::LisaParams {
                layers: Some(1),
                interval: Some(1),
            });
        }
        if name == "prompt_tuning" {
            s.method.as_mut().unwrap().prompt_tuning = Some(pb::PromptTuningParams {
                num_virtual_tokens: Some(3),
            });
        }
        if name == "prefix_tuning" {
            s.method.as_mut().unwrap().prefix_tuning = Some(pb::PrefixTuningParams {
                num_virtual_tokens: Some(3),
            });
        }
        cases.push((name, s));
    }
    // Merged exports of the methods that fold into the weights (one in bf16).
    for (name, spec) in &mut cases {
        if [
            "lora",
            "lora_dpo",
            "lora_chain",
            "dora",
            "ia3",
            "full",
            "lisa",
        ]
        .contains(name)
        {
            spec.export_merged = true;
        }
    }
    let mut s = tiny_spec("causal_lm", "", 3);
    s.export_merged = true;
    s.merged_dtype = "bf16".into();
    cases.push(("lora_merged_bf16", s));
    // A merge job over two of the LoRA adapters above (its output is a PEFT LoRA too).
    cases.push((
        "merge_model_stock",
        pb::JobSpec {
            base_model: "tiny".into(),
            task: "merge".into(),
            merge: Some(pb::Merge {
                sources: vec!["job_lora".into(), "job_lora_dpo".into()],
                method: "model_stock".into(),
                ..Default::default()
            }),
            export_merged: true,
            ..Default::default()
        },
    ));
    let ids = Tensor::from_vec(
        vec![1u32, 5, 9, 13, 17, 21, 25, 2, 4, 8, 16, 32, 64, 100],
        (2, 7),
        &Device::Cpu,
    )
    .unwrap();
    let mut manifest = Vec::new();
    let mut exported: std::collections::HashMap<&str, PathBuf> = std::collections::HashMap::new();
    for (name, spec) in cases {
        let control = Control::new();
        let mut rec = Recorder::default();
        let mut inputs = tiny_inputs(&root, name, spec, None);
        if name.starts_with("merge") {
            inputs.merge_sources = vec![exported["lora"].clone(), exported["lora_dpo"].clone()];
        }
        let out = EngineRunner.run(&inputs, &control, &mut rec).unwrap();
        let RunOutcome::Finished {
            adapter_dir,
            merged_dir,
            ..
        } = out
        else {
            panic!("{name}: {out:?}")
        };
        assert_eq!(
            merged_dir.is_some(),
            inputs.spec.export_merged.is_some(),
            "{name}"
        );
        exported.insert(name, adapter_dir.clone());
        let base = Llama::from_dir(&inputs.model_dir, DType::F32, &Device::Cpu).unwrap();
        let mut model = Llama::from_dir(&inputs.model_dir, DType::F32, &Device::Cpu).unwrap();
        load_adapter(&adapter_dir, &mut model).unwrap_or_else(|e| panic!("{name}: {e}"));
        let logits = model.forward(&ids, &Mode::Eval).unwrap();
        let plain = base.forward(&ids, &Mode::Eval).unwrap();
        let moved = (&logits - &plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            moved > 1e-5,
            "{name}: the adapter leaves the logits unchanged"
        );
        let file = root.join(name).join("tuna_logits.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([
                ("ids".to_string(), ids.to_dtype(DType::I64).unwrap()),
                ("logits".to_string(), logits.clone()),
            ]),
            &file,
        )
        .unwrap();
        if let Some(dir) = &merged_dir {
            // The merged folder alone (what transformers gets) gives the adapter's logits.
            let merged = Llama::from_dir(dir, DType::F32, &Device::Cpu).unwrap();
            let d = (&merged.forward(&ids, &Mode::Eval).unwrap() - &logits)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let bf16 = inputs.spec.export_merged == Some(tuna_spec::MergedDtype::Bf16);
            // bf16 keeps 8 bits of mantissa: its logits move by rounding, not by a wrong merge.
            let tolerance = if bf16 { 0.1 } else { 1e-4 };
            assert!(d < tolerance, "{name}: merged model differs by {d}");
            assert!(dir.join("config.json").exists() && dir.join("model.safetensors").exists());
            let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let want = if bf16 {
                safetensors::Dtype::BF16
            } else {
                safetensors::Dtype::F32
            };
            assert!(
                st.tensors().iter().all(|(_, t)| t.dtype() == want),
                "{name}"
            );
        }
        manifest.push(serde_json::json!({
            "name": name,
            "adapter": adapter_dir,
            "merged": merged_dir,
            "logits": file,
        }));
    }
    let base = root.join("tiny-llama");
    std::fs::write(
        root.join("manifest.json"),
        serde_json::to_string_pretty(&serde_json::json!({"base": base, "cases": manifest}))
            .unwrap(),
    )
    .unwrap();
}
