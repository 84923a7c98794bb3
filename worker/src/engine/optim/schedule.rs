//! Learning-rate schedules with linear warmup, matching HF `transformers`' schedulers
//! (`get_{constant,linear,cosine}_schedule_with_warmup`) plus constant-with-cooldown.

use serde::{Deserialize, Serialize};

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
    /// Constant, then linear decay to 0 over the last `cooldown_steps` (warmup-stable-decay).
    ConstantWithCooldown {
        cooldown_steps: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub kind: ScheduleKind,
}

impl Schedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        self.peak_lr * self.factor(step)
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
            ScheduleKind::ConstantWithCooldown { cooldown_steps } => {
                let start = self
                    .total_steps
                    .saturating_sub(cooldown_steps)
                    .max(self.warmup_steps);
                if step < start {
                    1.0
                } else {
                    let len = (self.total_steps - start).max(1) as f64;
                    (1.0 - (s - start as f64) / len).max(0.0)
                }
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

    #[test]
    fn warmup_then_shapes() {
        let lin = sched(ScheduleKind::Linear);
        assert_eq!(lin.lr_at(0), 0.0);
        assert!((lin.lr_at(5) - 0.5).abs() < 1e-12);
        assert!((lin.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((lin.lr_at(60) - 0.5).abs() < 1e-12);
        assert_eq!(lin.lr_at(110), 0.0);
        let cos = sched(ScheduleKind::Cosine { min_lr_ratio: 0.1 });
        assert!((cos.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((cos.lr_at(60) - 0.55).abs() < 1e-12);
        assert!((cos.lr_at(110) - 0.1).abs() < 1e-12);
        let cd = sched(ScheduleKind::ConstantWithCooldown { cooldown_steps: 20 });
        assert_eq!(cd.lr_at(89), 1.0);
        assert_eq!(cd.lr_at(90), 1.0);
        assert!((cd.lr_at(100) - 0.5).abs() < 1e-12);
        assert_eq!(cd.lr_at(110), 0.0);
        assert_eq!(sched(ScheduleKind::Constant).lr_at(1000), 1.0);
    }
}
