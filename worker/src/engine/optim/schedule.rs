//! Learning-rate schedules with linear warmup, matching HF `transformers`' schedulers
//! (`get_{constant,linear,cosine,cosine_with_min_lr,wsd,inverse_sqrt}_schedule...`).

use serde::{Deserialize, Serialize};

/// The shape of a WSD decay over its progress `p ∈ [0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayShape {
    /// `1 - p`.
    Linear,
    /// `(1 + cos(πp)) / 2`.
    Cosine,
    /// `1 - √p`.
    OneMinusSqrt,
}

impl DecayShape {
    fn at(self, p: f64) -> f64 {
        match self {
            DecayShape::Linear => 1.0 - p,
            DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            DecayShape::OneMinusSqrt => 1.0 - p.sqrt(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ScheduleKind {
    Constant,
    /// Linear decay to 0 at `total_steps`.
    Linear,
    /// Half-cosine from the peak down to `min_lr_ratio · peak` at `total_steps`.
    Cosine {
        min_lr_ratio: f64,
    },
    /// Warmup-stable-decay: the peak until the last `decay_fraction` of the steps, then a
    /// decay of `shape` down to `min_lr_ratio · peak` at `total_steps`.
    Wsd {
        decay_fraction: f64,
        shape: DecayShape,
        min_lr_ratio: f64,
    },
    /// `peak · sqrt(w / step)` after a warmup of `w` steps (`w` = 10,000 without warmup).
    InverseSqrt,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub kind: ScheduleKind,
}

/// HF's `inverse_sqrt` timescale when there is no warmup.
const INVERSE_SQRT_TIMESCALE: f64 = 10_000.0;

impl Schedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        self.peak_lr * self.factor(step)
    }

    /// The last step of a WSD schedule's stable phase: a checkpoint taken at or before it
    /// continues identically under a longer `total_steps` (a cheap fidelity for sweeps).
    /// `None` for the other schedules, whose every step depends on the total.
    pub fn stable_until(&self) -> Option<u64> {
        match self.kind {
            ScheduleKind::Wsd { decay_fraction, .. } => Some(self.decay_start(decay_fraction)),
            ScheduleKind::Constant => Some(self.total_steps),
            ScheduleKind::Linear | ScheduleKind::Cosine { .. } | ScheduleKind::InverseSqrt => None,
        }
    }

    fn decay_start(&self, decay_fraction: f64) -> u64 {
        tuna_spec::wsd_decay_start(self.total_steps, self.warmup_steps, decay_fraction)
    }

    fn factor(&self, step: u64) -> f64 {
        let (s, w, n) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        let progress = ((s - w) / (n - w).max(1.0)).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine { min_lr_ratio } => {
                let c = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                min_lr_ratio + (1.0 - min_lr_ratio) * c
            }
            ScheduleKind::Wsd {
                decay_fraction,
                shape,
                min_lr_ratio,
            } => {
                let start = self.decay_start(decay_fraction);
                if step < start {
                    return 1.0;
                }
                let len = (self.total_steps - start).max(1) as f64;
                let p = ((s - start as f64) / len).clamp(0.0, 1.0);
                min_lr_ratio + (1.0 - min_lr_ratio) * shape.at(p)
            }
            ScheduleKind::InverseSqrt => {
                let timescale = if self.warmup_steps > 0 {
                    w
                } else {
                    INVERSE_SQRT_TIMESCALE
                };
                1.0 / ((s + timescale - w) / timescale).sqrt()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> Schedule {
        Schedule {
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            kind,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_then_shapes() {
        let lin = sched(ScheduleKind::Linear);
        assert_eq!(lin.lr_at(0), 0.0);
        assert!(close(lin.lr_at(5), 0.5));
        assert!(close(lin.lr_at(10), 1.0));
        assert!(close(lin.lr_at(60), 0.5));
        assert_eq!(lin.lr_at(110), 0.0);
        let cos = sched(ScheduleKind::Cosine { min_lr_ratio: 0.1 });
        assert!(close(cos.lr_at(10), 1.0));
        assert!(close(cos.lr_at(60), 0.55));
        assert!(close(cos.lr_at(110), 0.1));
        assert_eq!(sched(ScheduleKind::Constant).lr_at(1000), 1.0);
    }

    #[test]
    fn wsd_is_flat_then_decays_in_its_shape_over_the_last_fraction() {
        // 110 steps, 20% decay: 22 decay steps from step 88.
        let wsd = |shape| {
            sched(ScheduleKind::Wsd {
                decay_fraction: 0.2,
                shape,
                min_lr_ratio: 0.0,
            })
        };
        let lin = wsd(DecayShape::Linear);
        assert!(close(lin.lr_at(5), 0.5), "warmup first");
        assert_eq!(lin.lr_at(87), 1.0);
        assert_eq!(lin.lr_at(88), 1.0);
        assert!(close(lin.lr_at(99), 0.5));
        assert!(close(lin.lr_at(110), 0.0));
        assert!(close(wsd(DecayShape::Cosine).lr_at(99), 0.5));
        assert!(close(wsd(DecayShape::Cosine).lr_at(88 + 11 / 2), {
            0.5 * (1.0 + (std::f64::consts::PI * 5.0 / 22.0).cos())
        }));
        assert!(close(
            wsd(DecayShape::OneMinusSqrt).lr_at(99),
            1.0 - 0.5f64.sqrt()
        ));
        assert_eq!(lin.stable_until(), Some(88));
        let floor = sched(ScheduleKind::Wsd {
            decay_fraction: 0.2,
            shape: DecayShape::Linear,
            min_lr_ratio: 0.1,
        });
        assert!(close(floor.lr_at(110), 0.1));
        assert!(close(floor.lr_at(99), 0.55));
    }

    #[test]
    fn wsd_stable_phase_is_the_same_under_a_longer_budget() {
        let short = Schedule {
            peak_lr: 3e-4,
            warmup_steps: 5,
            total_steps: 50,
            kind: ScheduleKind::Wsd {
                decay_fraction: 0.2,
                shape: DecayShape::OneMinusSqrt,
                min_lr_ratio: 0.0,
            },
        };
        let long = Schedule {
            total_steps: 200,
            ..short
        };
        let until = short.stable_until().unwrap_or(0);
        assert_eq!(until, 40);
        for s in 0..=until {
            assert_eq!(short.lr_at(s), long.lr_at(s), "step {s}");
        }
        assert!(long.lr_at(until + 5) > short.lr_at(until + 5));
        assert_eq!(sched(ScheduleKind::Linear).stable_until(), None);
    }

    #[test]
    fn inverse_sqrt_matches_transformers() {
        // get_inverse_sqrt_schedule(warmup=10): step/10 during warmup, then
        // 1/sqrt((step + timescale - warmup) / timescale) with timescale = warmup.
        let inv = sched(ScheduleKind::InverseSqrt);
        assert!(close(inv.lr_at(5), 0.5));
        assert!(close(inv.lr_at(10), 1.0));
        assert!(close(inv.lr_at(40), 0.5));
        assert!(close(inv.lr_at(90), 1.0 / 3.0));
        let cold = Schedule {
            warmup_steps: 0,
            ..inv
        };
        assert!(close(cold.lr_at(0), 1.0));
        assert!(close(cold.lr_at(30_000), 0.5));
    }
}
