//! Preference tuning: DPO (Rafailov et al., 2023), IPO (Azar et al., 2023) and ORPO (Hong et
//! et al., 2024) over chosen/rejected pairs, as TRL's `DPOTrainer` and `ORPOTrainer` compute
//! them (docs/engine-notes.md §6).
//!
//! A sequence's log-probability is the sum of its reply tokens' log-probabilities (IPO and
//! ORPO use the mean). DPO and IPO compare with a reference: the same model with its adapter
//! switched off ([`Mode::Reference`]), so no second copy of the weights is held. Losses are
//! computed in f64 from the per-sequence values, per pair, and the loop averages them over the
//! pairs of its window.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use tuna_spec::{PreferenceLoss, PreferenceParams, metrics};

use super::TrainError;
use super::objective::{EvalSums, Objective, Pass, autograd_pass};
use crate::engine::adapters::{AdapterSet, Mode};
use crate::engine::data::{PairBatch, PairExample};
use crate::engine::model::CausalLm;
use crate::engine::model::ops::compute_dtype;

/// Per-row sums of the masked token log-probabilities and the rows' target counts, both
/// `[rows]` f64, from flat logits `[rows·seq, vocab]`, labels and mask `[rows·seq]`.
pub fn sequence_logps(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    rows: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let dtype = compute_dtype(logits.dtype());
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(dtype)?, D::Minus1)?;
    let token = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let mask = mask.to_dtype(dtype)?;
    let sums = (token * &mask)?
        .reshape((rows, ()))?
        .to_dtype(DType::F64)?
        .sum(1)?;
    let counts = mask.reshape((rows, ()))?.to_dtype(DType::F64)?.sum(1)?;
    Ok((sums, counts))
}

/// `log σ(x)`, stable for large |x|: `min(x, 0) − log(1 + e^{−|x|})`.
fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let zero = x.zeros_like()?;
    x.minimum(&zero)? - (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Per-pair losses and implicit rewards, `[pairs]` f64 each.
pub struct PairLosses {
    pub losses: Tensor,
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
}

/// DPO's sigmoid loss with label smoothing (TRL `loss_type="sigmoid"`): with
/// `h = β·((π_c − ref_c) − (π_r − ref_r))`, `−(1−ε)·log σ(h) − ε·log σ(−h)`; rewards
/// `β·(π − ref)`. Inputs are summed log-probabilities.
pub fn dpo(
    policy: (&Tensor, &Tensor),
    reference: (&Tensor, &Tensor),
    beta: f64,
    label_smoothing: f64,
) -> candle_core::Result<PairLosses> {
    let chosen = (policy.0 - reference.0)?;
    let rejected = (policy.1 - reference.1)?;
    let h = ((&chosen - &rejected)? * beta)?;
    let losses = ((log_sigmoid(&h)? * -(1.0 - label_smoothing))?
        - (log_sigmoid(&h.neg()?)? * label_smoothing)?)?;
    Ok(PairLosses {
        losses,
        chosen_rewards: (chosen * beta)?,
        rejected_rewards: (rejected * beta)?,
    })
}

/// IPO (TRL `loss_type="ipo"`): `(h − 1/(2β))²` with `h = (π_c − ref_c) − (π_r − ref_r)` over
/// length-averaged log-probabilities; rewards `β·(π − ref)` of those averages.
pub fn ipo(
    policy: (&Tensor, &Tensor),
    reference: (&Tensor, &Tensor),
    beta: f64,
) -> candle_core::Result<PairLosses> {
    let chosen = (policy.0 - reference.0)?;
    let rejected = (policy.1 - reference.1)?;
    let losses = ((&chosen - &rejected)? - 1.0 / (2.0 * beta))?.sqr()?;
    Ok(PairLosses {
        losses,
        chosen_rewards: (chosen * beta)?,
        rejected_rewards: (rejected * beta)?,
    })
}

/// ORPO's odds-ratio term (TRL `ORPOTrainer.odds_ratio_loss`) over length-averaged
/// log-probabilities `c`, `r`: `−λ·log σ(log odds(c) − log odds(r))` with
/// `log odds(p) = p − log(1 − e^p)`; rewards `λ·c`, `λ·r`. The chosen reply's NLL is added
/// by the caller.
pub fn orpo_odds_ratio(
    chosen: &Tensor,
    rejected: &Tensor,
    lambda: f64,
) -> candle_core::Result<PairLosses> {
    // log(1 − e^p) for p < 0; p is clamped just below 0 so a reply the model is certain of
    // gives a large finite odds instead of log(0).
    let log1m_exp = |p: &Tensor| -> candle_core::Result<Tensor> {
        let cap = p.ones_like()? * -1e-12;
        (p.minimum(&cap?)?.exp()?.neg()? + 1.0)?.log()
    };
    let log_odds = ((chosen - rejected)? - (log1m_exp(chosen)? - log1m_exp(rejected)?)?)?;
    Ok(PairLosses {
        losses: (log_sigmoid(&log_odds)? * -lambda)?,
        chosen_rewards: (chosen * lambda)?,
        rejected_rewards: (rejected * lambda)?,
    })
}

/// The preference loss of a pair batch on a decoder with adapters.
pub struct PreferenceObjective<'a, M: CausalLm> {
    pub model: &'a M,
    pub adapters: &'a AdapterSet,
    pub params: PreferenceParams,
}

/// A batch's summed pair losses with what the metrics need, all `[]` or `[pairs]` f64.
struct Scored {
    /// `Σ` of the pairs' losses (ORPO: plus `pairs ×` the chosen replies' token-mean NLL).
    total: Tensor,
    chosen_rewards: Vec<f64>,
    rejected_rewards: Vec<f64>,
}

impl<M: CausalLm> PreferenceObjective<'_, M> {
    fn score(&self, b: &PairBatch, mode: &Mode) -> Result<Scored, TrainError> {
        let n = b.pairs;
        let batch = &b.batch;
        let rows = 2 * n;
        let logits = self.model.forward_flat(&batch.input_ids, mode)?;
        let (sums, counts) = sequence_logps(&logits, &batch.labels, &batch.mask, rows)?;
        drop(logits);
        let halves = |t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((t.narrow(0, 0, n)?, t.narrow(0, n, n)?))
        };
        let p = self.params;
        let (losses, total) = match p.loss {
            PreferenceLoss::Dpo | PreferenceLoss::Ipo => {
                let logits = self
                    .model
                    .forward_flat(&batch.input_ids, &Mode::Reference)?
                    .detach();
                let (ref_sums, _) = sequence_logps(&logits, &batch.labels, &batch.mask, rows)?;
                drop(logits);
                let (pc, pr) = halves(&sums)?;
                let (rc, rr) = halves(&ref_sums.detach())?;
                let l = if p.loss == PreferenceLoss::Dpo {
                    dpo((&pc, &pr), (&rc, &rr), p.beta, p.label_smoothing)?
                } else {
                    let (cc, cr) = halves(&counts)?;
                    let avg = |s: &Tensor, c: &Tensor| s.broadcast_div(c);
                    ipo(
                        (&avg(&pc, &cc)?, &avg(&pr, &cr)?),
                        (&avg(&rc, &cc)?, &avg(&rr, &cr)?),
                        p.beta,
                    )?
                };
                let total = l.losses.sum_all()?;
                (l, total)
            }
            PreferenceLoss::Orpo => {
                let avg = sums.broadcast_div(&counts)?;
                let (c, r) = halves(&avg)?;
                let l = orpo_odds_ratio(&c, &r, p.beta)?;
                // TRL: the chosen replies' NLL, a token mean over the batch, plus the mean
                // odds-ratio term; as a sum over pairs that is `n · nll + Σ term`.
                let (chosen_sum, _) = halves(&sums)?;
                let (chosen_count, _) = halves(&counts)?;
                let nll = (chosen_sum.sum_all()?.neg()? / chosen_count.sum_all()?)?;
                let total = ((nll * n as f64)? + l.losses.sum_all()?)?;
                (l, total)
            }
        };
        Ok(Scored {
            total,
            chosen_rewards: losses.chosen_rewards.to_vec1()?,
            rejected_rewards: losses.rejected_rewards.to_vec1()?,
        })
    }
}

/// `scale · Σ` of each reward metric over the pairs.
fn reward_stats(s: &Scored, scale: f64) -> Vec<(&'static str, f64)> {
    let (mut chosen, mut rejected, mut right) = (0.0, 0.0, 0.0);
    for (c, r) in s.chosen_rewards.iter().zip(&s.rejected_rewards) {
        chosen += c;
        rejected += r;
        if c > r {
            right += 1.0;
        }
    }
    vec![
        (metrics::REWARD_CHOSEN, chosen * scale),
        (metrics::REWARD_REJECTED, rejected * scale),
        (metrics::REWARD_MARGIN, (chosen - rejected) * scale),
        (metrics::REWARD_ACCURACY, right * scale),
    ]
}

impl<M: CausalLm> Objective for PreferenceObjective<'_, M> {
    type Example = PairExample;

    fn device(&self) -> &Device {
        self.model.device()
    }

    fn vars(&self) -> &BTreeMap<String, Var> {
        self.adapters.vars()
    }

    /// The loss is a mean over pairs.
    fn targets(batch: &PairBatch) -> f64 {
        batch.pairs as f64
    }

    fn tokens(batch: &PairBatch) -> usize {
        batch.batch.num_tokens
    }

    fn loss_and_grads(
        &self,
        batch: &PairBatch,
        mode: &Mode,
        scale: f64,
    ) -> Result<Pass, TrainError> {
        crate::engine::pool::install(|| {
            let started = Instant::now();
            let scored = self.score(batch, mode)?;
            let loss = (&scored.total * scale)?;
            let mut pass = autograd_pass(&loss, self.adapters.vars(), started)?;
            pass.stats = reward_stats(&scored, scale);
            Ok(pass)
        })
    }

    fn loss(&self, batch: &PairBatch, mode: &Mode, scale: f64) -> Result<f64, TrainError> {
        crate::engine::pool::install(|| {
            let scored = self.score(batch, mode)?;
            Ok(scored.total.detach().to_scalar::<f64>()? * scale)
        })
    }

    /// Mean pair loss; the accuracy is the share of pairs whose chosen reply earns the
    /// larger reward.
    fn evaluate(&self, batches: &[PairBatch]) -> Result<EvalSums, TrainError> {
        let (mut loss, mut right, mut pairs) = (0.0, 0.0, 0usize);
        for b in batches {
            let s = self.score(b, &Mode::Eval)?;
            loss += s.total.detach().to_scalar::<f64>()?;
            right += s
                .chosen_rewards
                .iter()
                .zip(&s.rejected_rewards)
                .filter(|(c, r)| c > r)
                .count() as f64;
            pairs += b.pairs;
        }
        let n = pairs.max(1) as f64;
        Ok(EvalSums {
            loss: loss / n,
            accuracy: Some(right / n),
        })
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.adapters.tensors()
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        Ok(self.adapters.load_tensors(tensors)?)
    }
}
