//! Preference tuning: the losses and their gradients against the published formulas on fixed
//! log-probabilities (hand-worked cases), and DPO, IPO and ORPO through the training loop on
//! the tiny model: a fresh adapter is its own reference (DPO starts at ln 2), the reference
//! pass is the base model, and training moves the rewards apart.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor, Var};
use tuna_spec::{PreferenceLoss, PreferenceParams};

use super::util::tiny_model;
use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules};
use crate::engine::data::Batchable;
use crate::engine::data::{ByteTokenizer, Format, Loader, PairExample, jsonl, pairs_from_records};
use crate::engine::model::tiny::TinySpec;
use crate::engine::trainer::preference::{self, PreferenceObjective};
use crate::engine::trainer::{Event, Objective, TrainConfig, Trainer};

fn sigma(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn vars(values: &[f64]) -> Vec<Var> {
    values
        .iter()
        .map(|v| Var::from_vec(vec![*v], 1, &Device::Cpu).unwrap())
        .collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.sum_all().unwrap().to_scalar::<f64>().unwrap()
}

/// `(loss, d loss / d each input)` of `f` at `values`.
fn value_and_grads(
    values: &[f64],
    f: impl Fn(&[Tensor]) -> preference::PairLosses,
) -> (f64, Vec<f64>, preference::PairLosses) {
    let v = vars(values);
    let t: Vec<Tensor> = v.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&t);
    let grads = out.losses.sum_all().unwrap().backward().unwrap();
    let g = v.iter().map(|v| grads.get(v).map_or(0.0, scalar)).collect();
    (scalar(&out.losses), g, out)
}

#[test]
fn dpo_loss_and_gradient_follow_the_formula() {
    // π_c, π_r, ref_c, ref_r (summed log-probabilities), β = 0.1.
    let (pc, pr, rc, rr, beta) = (-10.0, -12.0, -11.0, -11.0, 0.1);
    for eps in [0.0, 0.2] {
        let (loss, g, out) = value_and_grads(&[pc, pr, rc, rr], |t| {
            preference::dpo((&t[0], &t[1]), (&t[2], &t[3]), beta, eps).unwrap()
        });
        let h = beta * ((pc - rc) - (pr - rr));
        // −(1−ε)·log σ(h) − ε·log σ(−h); h = 0.2 → 0.598138869 at ε = 0.
        let want = -(1.0 - eps) * sigma(h).ln() - eps * sigma(-h).ln();
        assert!((loss - want).abs() < 1e-12, "ε={eps}: {loss} vs {want}");
        if eps == 0.0 {
            assert!((loss - 0.598_138_869_3).abs() < 1e-9, "{loss}");
        }
        let d_pc = -beta * ((1.0 - eps) * sigma(-h) - eps * sigma(h));
        assert!((g[0] - d_pc).abs() < 1e-12, "{g:?} vs {d_pc}");
        assert!((g[1] + d_pc).abs() < 1e-12, "{g:?}");
        // The reference is a constant in training; its gradient is the mirror image.
        assert!(
            (g[2] + d_pc).abs() < 1e-12 && (g[3] - d_pc).abs() < 1e-12,
            "{g:?}"
        );
        assert!((scalar(&out.chosen_rewards) - beta * (pc - rc)).abs() < 1e-12);
        assert!((scalar(&out.rejected_rewards) - beta * (pr - rr)).abs() < 1e-12);
    }
    // Far from zero the stable log σ stays finite and exact.
    let (loss, _, _) = value_and_grads(&[0.0, -5000.0, 0.0, 0.0], |t| {
        preference::dpo((&t[0], &t[1]), (&t[2], &t[3]), 1.0, 0.0).unwrap()
    });
    assert_eq!(loss, 0.0);
    let (loss, _, _) = value_and_grads(&[-5000.0, 0.0, 0.0, 0.0], |t| {
        preference::dpo((&t[0], &t[1]), (&t[2], &t[3]), 1.0, 0.0).unwrap()
    });
    assert!((loss - 5000.0).abs() < 1e-9, "{loss}");
}

#[test]
fn ipo_loss_and_gradient_follow_the_formula() {
    // Length-averaged log-probabilities; β = 0.5 so 1/(2β) = 1.
    let (pc, pr, rc, rr, beta) = (-1.0, -1.5, -1.2, -1.2, 0.5);
    let (loss, g, _) = value_and_grads(&[pc, pr, rc, rr], |t| {
        preference::ipo((&t[0], &t[1]), (&t[2], &t[3]), beta).unwrap()
    });
    // h = 0.2 − (−0.3) = 0.5: (0.5 − 1)² = 0.25, d/dπ_c = 2·(0.5 − 1) = −1.
    assert!((loss - 0.25).abs() < 1e-12, "{loss}");
    assert!(
        (g[0] + 1.0).abs() < 1e-12 && (g[1] - 1.0).abs() < 1e-12,
        "{g:?}"
    );
}

#[test]
fn orpo_odds_ratio_and_gradient_follow_the_formula() {
    let (c, r, lambda) = (-0.5f64, -1.0f64, 0.1);
    let (loss, g, out) = value_and_grads(&[c, r], |t| {
        preference::orpo_odds_ratio(&t[0], &t[1], lambda).unwrap()
    });
    let log_odds = |p: f64| p - (1.0 - p.exp()).ln();
    let d = log_odds(c) - log_odds(r);
    // log odds: 0.432752 and −0.541325, so d = 0.974077 and the loss 0.0320300.
    let want = -lambda * sigma(d).ln();
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    assert!((loss - 0.032_030).abs() < 1e-6, "{loss}");
    let d_c = -lambda * sigma(-d) / (1.0 - c.exp());
    let d_r = lambda * sigma(-d) / (1.0 - r.exp());
    assert!(
        (g[0] - d_c).abs() < 1e-12 && (g[1] - d_r).abs() < 1e-12,
        "{g:?}"
    );
    assert!((scalar(&out.chosen_rewards) - lambda * c).abs() < 1e-12);
    // A reply the model is certain of (log-probability 0) gives a finite loss.
    let (loss, _, _) = value_and_grads(&[0.0, -1.0], |t| {
        preference::orpo_odds_ratio(&t[0], &t[1], lambda).unwrap()
    });
    assert!(loss.is_finite(), "{loss}");
}

const PAIRS: &str = r#"{"prompt":"2+2=","chosen":"4","rejected":"5"}
{"prompt":"3+3=","chosen":"6","rejected":"7"}
{"prompt":"cat says ","chosen":"meow","rejected":"woof"}
{"prompt":"dog says ","chosen":"woof","rejected":"meow"}
"#;

fn pairs() -> Vec<PairExample> {
    let records = jsonl::parse_numbered(PAIRS, Format::Preference).unwrap();
    pairs_from_records(&records, &ByteTokenizer, 32).unwrap()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        seed: 4,
        ..super::util::constant_lr(steps, 2e-2)
    }
}

fn params(loss: PreferenceLoss, beta: f64) -> PreferenceParams {
    PreferenceParams {
        loss,
        beta,
        label_smoothing: 0.0,
    }
}

#[test]
fn the_reference_pass_is_the_base_model_with_the_adapter_off() {
    let spec = TinySpec::default();
    let base = tiny_model(&spec, 3, DType::F32);
    let mut model = tiny_model(&spec, 3, DType::F32);
    let set = AdapterSet::attach(
        &mut model,
        &AdapterConfig::lora(4, 8.0, TargetModules::all_linear()),
    )
    .unwrap();
    super::util::perturb_b(&set, 2);
    let ids = super::util::random_ids(2, 6, spec.vocab, 1);
    let reference = model.forward(&ids, &Mode::Reference).unwrap();
    let plain = base.forward(&ids, &Mode::Eval).unwrap();
    let adapted = model.forward(&ids, &Mode::Eval).unwrap();
    assert_eq!(super::util::max_abs_diff(&reference, &plain), 0.0);
    assert!(super::util::max_abs_diff(&adapted, &plain) > 1e-4);
}

#[test]
fn dpo_ipo_and_orpo_train_the_tiny_model_and_pull_the_rewards_apart() {
    let spec = TinySpec::default();
    for (loss, beta) in [
        (PreferenceLoss::Dpo, 0.5),
        (PreferenceLoss::Ipo, 0.5),
        (PreferenceLoss::Orpo, 0.5),
    ] {
        let mut model = tiny_model(&spec, 3, DType::F32);
        let set = AdapterSet::attach(
            &mut model,
            &AdapterConfig {
                seed: 5,
                ..AdapterConfig::lora(8, 16.0, TargetModules::all_linear())
            },
        )
        .unwrap();
        let objective = PreferenceObjective {
            model: &model,
            adapters: &set,
            params: params(loss, beta),
        };
        let train = Loader::new(pairs(), 4, 1, 0).unwrap();
        let eval = Loader::new(pairs(), 4, 1, 0).unwrap();
        let mut trainer =
            Trainer::with_objective(objective, train, Some(eval), config(30)).unwrap();
        let mut steps = Vec::new();
        trainer
            .run(&AtomicBool::new(false), None, &mut |e| {
                if let Event::Step(m) = e {
                    steps.push(m.clone());
                }
            })
            .unwrap();
        let first = &steps[0];
        let last = &steps[steps.len() - 1];
        let metric = |m: &crate::engine::trainer::StepMetrics, name: &str| {
            m.extra
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .unwrap()
        };
        use tuna_spec::metrics::{REWARD_ACCURACY, REWARD_CHOSEN, REWARD_MARGIN, REWARD_REJECTED};
        match loss {
            // B = 0 at init: the policy is its own reference, every margin is 0.
            PreferenceLoss::Dpo => {
                assert!(
                    (first.loss - std::f64::consts::LN_2).abs() < 1e-6,
                    "{}",
                    first.loss
                );
                assert_eq!(metric(first, REWARD_MARGIN), 0.0);
            }
            // (0 − 1/(2β))² = 1 at the start.
            PreferenceLoss::Ipo => assert!((first.loss - 1.0).abs() < 1e-6, "{}", first.loss),
            PreferenceLoss::Orpo => {}
        }
        let margin = metric(last, REWARD_MARGIN);
        assert!(
            (margin - (metric(last, REWARD_CHOSEN) - metric(last, REWARD_REJECTED))).abs() < 1e-9
        );
        assert!(
            margin > metric(first, REWARD_MARGIN),
            "{loss}: margin {margin}"
        );
        assert_eq!(metric(last, REWARD_ACCURACY), 1.0, "{loss}");
        assert!(
            last.loss < first.loss * 0.5,
            "{loss}: {} → {}",
            first.loss,
            last.loss
        );
        let e = trainer.evaluate().unwrap();
        assert_eq!(e.accuracy, Some(1.0), "{loss}");
        println!(
            "{loss}: loss {} → {}, margin {margin}",
            first.loss, last.loss
        );
    }
}

#[test]
fn the_objective_scores_a_batch_as_the_mean_of_its_pairs() {
    // A batch of 4 pairs scores the same as its pairs one at a time.
    let spec = TinySpec::default();
    let mut model = tiny_model(&spec, 3, DType::F32);
    let set = AdapterSet::attach(
        &mut model,
        &AdapterConfig::lora(4, 8.0, TargetModules::all_linear()),
    )
    .unwrap();
    super::util::perturb_b(&set, 7);
    for loss in PreferenceLoss::ALL {
        let objective = PreferenceObjective {
            model: &model,
            adapters: &set,
            params: params(*loss, 0.3),
        };
        let all = pairs();
        let refs: Vec<&PairExample> = all.iter().collect();
        let whole = PairExample::collate(&refs, 0, 0.0, &Device::Cpu).unwrap();
        let together = objective.loss(&whole, &Mode::Eval, 1.0).unwrap();
        let apart: f64 = all
            .iter()
            .map(|p| {
                let b = PairExample::collate(&[p], 0, 0.0, &Device::Cpu).unwrap();
                objective.loss(&b, &Mode::Eval, 1.0).unwrap()
            })
            .sum();
        match loss {
            // ORPO's NLL term is a token mean over the batch, as TRL takes it.
            PreferenceLoss::Orpo => assert!(together.is_finite()),
            PreferenceLoss::Dpo | PreferenceLoss::Ipo => {
                assert!(
                    (together - apart).abs() < 1e-5,
                    "{loss}: {together} vs {apart}"
                );
            }
        }
    }
}

/// TRL 1.16's own loss code on fixed log-probabilities (`scripts/trl_preference_oracle.py`,
/// run once; its output is committed) against Tuna's: DPO and IPO to 1e-9, ORPO to 1e-6 (TRL
/// computes its odds ratio in f32).
#[test]
fn losses_equal_trls_on_the_same_log_probabilities() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("trl_preference.json")).unwrap();
    let list = |key: &str| -> Tensor {
        let v: Vec<f64> = fixture["pairs"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap()
    };
    let beta = fixture["beta"].as_f64().unwrap();
    let (pc, pr, rc, rr) = (
        list("chosen"),
        list("rejected"),
        list("ref_chosen"),
        list("ref_rejected"),
    );
    let (lc, lr) = (list("chosen_len"), list("rejected_len"));
    let mean = |t: &Tensor| t.mean_all().unwrap().to_scalar::<f64>().unwrap();
    let want = |key: &str| fixture[key].as_f64().unwrap();

    let dpo = preference::dpo((&pc, &pr), (&rc, &rr), beta, 0.0).unwrap();
    assert!((mean(&dpo.losses) - want("dpo_sigmoid_mean_loss")).abs() < 1e-9);
    let avg = |s: &Tensor, n: &Tensor| (s / n).unwrap();
    let ipo = preference::ipo(
        (&avg(&pc, &lc), &avg(&pr, &lr)),
        (&avg(&rc, &lc), &avg(&rr, &lr)),
        beta,
    )
    .unwrap();
    assert!((mean(&ipo.losses) - want("ipo_mean_loss")).abs() < 1e-9);
    // TRL's odds_ratio_loss casts to f32 first: 1e-6 there.
    let orpo = preference::orpo_odds_ratio(&avg(&pc, &lc), &avg(&pr, &lr), beta).unwrap();
    assert!((mean(&orpo.losses) - want("orpo_odds_ratio_mean_loss")).abs() < 1e-6);
    let rewards: Vec<f64> = orpo.chosen_rewards.to_vec1().unwrap();
    for (a, b) in rewards
        .iter()
        .zip(fixture["orpo_chosen_rewards"].as_array().unwrap())
    {
        assert!((a - b.as_f64().unwrap()).abs() < 1e-6, "{a} vs {b}");
    }
}

/// The tiny model's per-pair log-probabilities (summed over each reply) and reply lengths:
/// policy with a perturbed LoRA, reference with it switched off.
fn tiny_pair_logps(model: &crate::engine::model::Llama) -> serde_json::Value {
    let all = pairs();
    let refs: Vec<&PairExample> = all.iter().collect();
    let b = PairExample::collate(&refs, 0, 0.0, &Device::Cpu).unwrap();
    let n = b.pairs;
    let logps = |mode: &Mode| -> (Vec<f64>, Vec<f64>) {
        let logits = model.forward_flat(&b.batch.input_ids, mode).unwrap();
        let (sums, counts) =
            preference::sequence_logps(&logits, &b.batch.labels, &b.batch.mask, 2 * n).unwrap();
        (sums.to_vec1().unwrap(), counts.to_vec1().unwrap())
    };
    let (policy, counts) = logps(&Mode::Eval);
    let (reference, _) = logps(&Mode::Reference);
    serde_json::json!({
        "beta": 0.3,
        "pairs": {
            "chosen": &policy[..n],
            "rejected": &policy[n..],
            "ref_chosen": &reference[..n],
            "ref_rejected": &reference[n..],
            "chosen_len": counts[..n].iter().map(|c| *c as u64).collect::<Vec<_>>(),
            "rejected_len": counts[n..].iter().map(|c| *c as u64).collect::<Vec<_>>(),
        }
    })
}

/// One batch of the tiny model through [`PreferenceObjective::loss`] equals what TRL 1.16's
/// loss code gives on the same log-probabilities (`trl_preference_tiny.json`, written by
/// `scripts/trl_preference_oracle.py` from this test's `TUNA_TRL_INPUTS` output): DPO and IPO
/// to 1e-6, ORPO to 1e-5 (TRL's odds ratio runs in f32).
#[test]
fn tiny_model_losses_equal_trls() {
    let spec = TinySpec::default();
    let mut model = tiny_model(&spec, 3, DType::F32);
    let set = AdapterSet::attach(
        &mut model,
        &AdapterConfig::lora(4, 8.0, TargetModules::all_linear()),
    )
    .unwrap();
    super::util::perturb_b(&set, 7);
    let inputs = tiny_pair_logps(&model);
    if let Some(path) = std::env::var_os("TUNA_TRL_INPUTS") {
        std::fs::write(path, serde_json::to_string_pretty(&inputs).unwrap()).unwrap();
        return;
    }
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("trl_preference_tiny.json")).unwrap();
    // The committed inputs are this model's (so TRL saw the same numbers).
    for key in ["chosen", "rejected", "ref_chosen", "ref_rejected"] {
        let ours = inputs["pairs"][key].as_array().unwrap();
        let theirs = fixture["pairs"][key].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(theirs) {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "{key}: {a} vs {b}");
        }
    }
    let all = pairs();
    let refs: Vec<&PairExample> = all.iter().collect();
    let b = PairExample::collate(&refs, 0, 0.0, &Device::Cpu).unwrap();
    let beta = fixture["beta"].as_f64().unwrap();
    for (loss, key, tol) in [
        (PreferenceLoss::Dpo, "dpo_sigmoid_mean_loss", 1e-6),
        (PreferenceLoss::Ipo, "ipo_mean_loss", 1e-6),
        (PreferenceLoss::Orpo, "orpo_mean_loss", 1e-5),
    ] {
        let objective = PreferenceObjective {
            model: &model,
            adapters: &set,
            params: params(loss, beta),
        };
        let ours = objective
            .loss(&b, &Mode::Eval, 1.0 / b.pairs as f64)
            .unwrap();
        let trl = fixture[key].as_f64().unwrap();
        assert!((ours - trl).abs() < tol, "{loss}: Tuna {ours}, TRL {trl}");
        println!("{loss}: Tuna {ours:.9}, TRL {trl:.9}");
    }
}
