//! Learning-rate schedules, as a function of the step within a training
//! phase (a phase is the dense training or one retraining round), and
//! restarts of the schedule within a phase ([`LrRestart`]: ADMM restarts it
//! in every ADMM iteration, as the reference implementations do).

use serde::{Deserialize, Serialize};

/// A learning-rate schedule (multiplies the optimizer's base rate).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step {
        /// Epochs between decays.
        step_epochs: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine from the base rate to `min_factor` × base over the phase.
    Cosine {
        /// Final rate as a fraction of the base.
        #[serde(default)]
        min_factor: f64,
    },
    /// Linear warmup over `warmup` (fraction of the phase's steps if < 1,
    /// else a step count), then linear decay to zero (BERT's recipe).
    Linear {
        /// Warmup length.
        #[serde(default)]
        warmup: f64,
    },
}

impl LrSchedule {
    /// Checks the values; `path` prefixes key names in messages.
    pub fn validate(&self, path: &str) -> Result<(), String> {
        match self {
            LrSchedule::Step { step_epochs, gamma } => {
                if *step_epochs == 0 {
                    return Err(format!("{path}.step_epochs must be at least 1"));
                }
                if !(*gamma > 0.0 && *gamma <= 1.0) {
                    return Err(format!("{path}.gamma must be in (0, 1], found {gamma}"));
                }
            }
            LrSchedule::Cosine { min_factor } if !(0.0..=1.0).contains(min_factor) => {
                return Err(format!("{path}.min_factor must be in [0, 1], found {min_factor}"));
            }
            LrSchedule::Linear { warmup } if *warmup < 0.0 => {
                return Err(format!("{path}.warmup must be >= 0, found {warmup}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// The factor at `step` (0-based) of a phase of `total` steps with
    /// `steps_per_epoch` steps per epoch.
    pub fn factor(&self, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
        let total = total.max(1);
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Step { step_epochs, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                gamma.powi((epoch / step_epochs) as i32)
            }
            LrSchedule::Cosine { min_factor } => {
                let t = step as f64 / total as f64;
                min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Linear { warmup } => {
                let w = if warmup < 1.0 { (warmup * total as f64).round() } else { warmup } as usize;
                if step < w {
                    (step + 1) as f64 / w as f64
                } else {
                    ((total - step.min(total)) as f64 / (total - w.min(total)).max(1) as f64).max(0.0)
                }
            }
        }
    }
}

/// The schedule restarted every so many steps or epochs of a phase: each
/// cycle runs the whole schedule (warmup, decay) over its own length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrRestart {
    /// Every this many optimizer steps of the phase.
    Steps(usize),
    /// Every this many epochs of the phase.
    Epochs(usize),
}

impl LrRestart {
    /// `(step in the cycle, steps in the cycle)` for `step` (0-based) of a
    /// phase with `steps_per_epoch` steps per epoch. A cycle length of 0
    /// counts as 1.
    pub fn position(self, step: usize, steps_per_epoch: usize) -> (usize, usize) {
        let cycle = match self {
            LrRestart::Steps(n) => n,
            LrRestart::Epochs(n) => n * steps_per_epoch,
        }
        .max(1);
        (step % cycle, cycle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_schedules() {
        let c = LrSchedule::Cosine { min_factor: 0.0 };
        assert!((c.factor(0, 100, 10) - 1.0).abs() < 1e-12);
        assert!((c.factor(50, 100, 10) - 0.5).abs() < 1e-12);
        let s = LrSchedule::Step { step_epochs: 2, gamma: 0.1 };
        assert!((s.factor(25, 100, 10) - 0.1).abs() < 1e-12);
        let l = LrSchedule::Linear { warmup: 0.1 };
        assert!((l.factor(4, 100, 10) - 0.5).abs() < 1e-12);
        assert!((l.factor(10, 100, 10) - 1.0).abs() < 1e-12);
        assert!(l.factor(99, 100, 10) > 0.0 && l.factor(99, 100, 10) < 0.02);
        assert!(LrSchedule::Step { step_epochs: 0, gamma: 0.5 }.validate("train.lr_schedule").is_err());
    }

    #[test]
    fn restarts_run_the_schedule_over_each_cycle() {
        assert_eq!(LrRestart::Steps(4).position(0, 10), (0, 4));
        assert_eq!(LrRestart::Steps(4).position(9, 10), (1, 4));
        assert_eq!(LrRestart::Epochs(2).position(25, 10), (5, 20));
        assert_eq!(LrRestart::Steps(0).position(7, 10), (0, 1));
        // a linear decay restarted every 4 steps: back to the base rate at 4, 8, ...
        let l = LrSchedule::Linear { warmup: 0.0 };
        let f = |t: usize| {
            let (s, n) = LrRestart::Steps(4).position(t, 10);
            l.factor(s, n, 10)
        };
        assert_eq!([f(0), f(3), f(4), f(8)], [1.0, 0.25, 1.0, 1.0]);
    }
}
