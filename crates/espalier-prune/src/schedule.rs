//! Pruning schedules: when to prune, rewind and reset the optimizer.
//!
//! A [`ScheduleConfig`] expands into a [`Plan`]: a list of training phases
//! (round 0 is the dense training; round r ≥ 1 retrains after the r-th
//! pruning) with the [`Action`]s that open each phase. The plan is a pure
//! function of the config, so a resumed run recomputes it and continues at
//! the next epoch.
//!
//! - One-shot: train, prune once to the target, fine-tune.
//! - IMP (Han et al. 2015; Frankle & Carbin 2019): each round prunes a
//!   fraction `rate` of the *remaining* weights, so after r rounds the
//!   sparsity is 1 − (1 − rate)^r; optional rewind of the survivors to their
//!   initial values or to the weights after epoch k (Frankle et al. 2020).
//! - Gradual (Zhu & Gupta 2017, the schedule of movement pruning): the
//!   cubic s_t = s_f + (s_0 − s_f)(1 − (t − t_0)/(n·Δt))³, applied every Δt
//!   steps between `start_epoch` and `end_epoch` of the dense phase.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What to rewind the surviving weights to at the start of each round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rewind {
    /// Keep the trained weights (classic IMP fine-tuning).
    #[default]
    None,
    /// The initial weights (lottery ticket).
    Init,
    /// The weights after this many epochs of dense training.
    Epoch(usize),
}

impl Rewind {
    /// Parses `none`, `init` or `epoch:K`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Rewind::None),
            "init" => Ok(Rewind::Init),
            _ => s
                .strip_prefix("epoch:")
                .and_then(|k| k.parse().ok())
                .map(Rewind::Epoch)
                .ok_or_else(|| format!("invalid rewind `{s}`: expected `none`, `init` or `epoch:K`")),
        }
    }
    fn epoch(self) -> Option<usize> {
        match self {
            Rewind::None => None,
            Rewind::Init => Some(0),
            Rewind::Epoch(k) => Some(k),
        }
    }
}

impl Serialize for Rewind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rewind::None => s.serialize_str("none"),
            Rewind::Init => s.serialize_str("init"),
            Rewind::Epoch(k) => s.serialize_str(&format!("epoch:{k}")),
        }
    }
}

impl<'de> Deserialize<'de> for Rewind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rewind::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A pruning schedule as written in experiment configs (`[prune.schedule]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// Prune once after dense training, then fine-tune.
    OneShot {
        /// Target sparsity in [0, 1).
        sparsity: f64,
        /// Fine-tuning epochs after pruning.
        #[serde(default)]
        finetune_epochs: usize,
    },
    /// Iterative magnitude pruning.
    Imp {
        /// Fraction of the remaining weights pruned per round.
        #[serde(default = "default_rate")]
        rate: f64,
        /// Number of rounds (or give `target_sparsity`).
        #[serde(default)]
        rounds: Option<usize>,
        /// Prune until this sparsity (the last round is clamped to it).
        #[serde(default)]
        target_sparsity: Option<f64>,
        /// Retraining epochs per round.
        epochs_per_round: usize,
        /// Rewind target.
        #[serde(default)]
        rewind: Rewind,
        /// Fresh optimizer state at every round (default true).
        #[serde(default = "yes")]
        reset_optimizer: bool,
    },
    /// Gradual pruning with the cubic schedule during dense training.
    Gradual {
        /// Final sparsity s_f.
        final_sparsity: f64,
        /// Initial sparsity s_0.
        #[serde(default)]
        initial_sparsity: f64,
        /// First epoch of pruning (t₀).
        #[serde(default)]
        start_epoch: usize,
        /// Epoch at which s_f is reached.
        end_epoch: usize,
        /// Steps between pruning events (Δt).
        #[serde(default = "default_every")]
        every_steps: usize,
    },
}

fn default_rate() -> f64 {
    0.2
}
fn default_every() -> usize {
    100
}
fn yes() -> bool {
    true
}

/// One thing the run loop must do before an epoch.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Snapshot the current weights as the rewind target.
    SaveRewindPoint,
    /// Prune to this overall sparsity of the selected weights.
    Prune {
        /// Target sparsity.
        sparsity: f64,
    },
    /// Reset surviving weights to the rewind snapshot.
    Rewind,
    /// Fresh optimizer state.
    ResetOptimizer,
}

/// A stretch of training with one learning-rate schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// 0 = dense training; r ≥ 1 = after the r-th pruning.
    pub round: usize,
    /// Epochs in the phase.
    pub epochs: usize,
    /// Actions before its first epoch.
    pub start: Vec<Action>,
    /// The sparsity the phase trains at (for reports).
    pub sparsity: f64,
}

/// The cubic schedule of a gradual plan, in global epochs and steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cubic {
    /// s₀.
    pub initial: f64,
    /// s_f.
    pub last: f64,
    /// t₀ (epoch).
    pub start_epoch: usize,
    /// Epoch at which s_f is reached.
    pub end_epoch: usize,
    /// Δt (steps).
    pub every: usize,
}

impl Cubic {
    /// The target sparsity at step `step` of epoch `epoch` (`spe` steps
    /// per epoch), when a pruning event falls there.
    pub fn target(&self, epoch: usize, step: usize, spe: usize) -> Option<f64> {
        let t = epoch * spe + step + 1;
        let (t0, t1) = (self.start_epoch * spe, self.end_epoch * spe);
        if t <= t0 || t > t1 {
            return None;
        }
        if !(t - t0).is_multiple_of(self.every) && t != t1 {
            return None;
        }
        let frac = (t - t0) as f64 / (t1 - t0).max(1) as f64;
        Some(self.last + (self.initial - self.last) * (1.0 - frac).powi(3))
    }
}

/// The expanded schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Training phases in order.
    pub phases: Vec<Phase>,
    /// Global epoch at whose start the rewind snapshot is taken.
    pub rewind_point: Option<usize>,
    /// Gradual pruning during the dense phase.
    pub gradual: Option<Cubic>,
}

impl ScheduleConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str, dense_epochs: usize) -> Result<(), String> {
        let frac = |k: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{path}.{k} must be in [0, 1), found {v}"))
            }
        };
        match self {
            ScheduleConfig::OneShot { sparsity, .. } => frac("sparsity", *sparsity),
            ScheduleConfig::Imp { rate, rounds, target_sparsity, epochs_per_round, rewind, .. } => {
                if !(*rate > 0.0 && *rate < 1.0) {
                    return Err(format!("{path}.rate must be in (0, 1), found {rate}"));
                }
                match (rounds, target_sparsity) {
                    (Some(_), Some(_)) => {
                        return Err(format!("{path}: give either rounds or target_sparsity, not both"))
                    }
                    (None, None) => return Err(format!("{path}: give rounds or target_sparsity")),
                    (Some(0), _) => return Err(format!("{path}.rounds must be at least 1")),
                    (_, Some(t)) => frac("target_sparsity", *t)?,
                    _ => {}
                }
                if *epochs_per_round == 0 {
                    return Err(format!("{path}.epochs_per_round must be at least 1"));
                }
                if let Some(k) = rewind.epoch() {
                    if k > dense_epochs {
                        return Err(format!(
                            "{path}.rewind: epoch {k} is past the {dense_epochs} dense epochs (train.epochs)"
                        ));
                    }
                }
                Ok(())
            }
            ScheduleConfig::Gradual { final_sparsity, initial_sparsity, start_epoch, end_epoch, every_steps } => {
                frac("final_sparsity", *final_sparsity)?;
                frac("initial_sparsity", *initial_sparsity)?;
                if end_epoch <= start_epoch || *end_epoch > dense_epochs {
                    return Err(format!(
                        "{path}: need start_epoch < end_epoch <= train.epochs ({dense_epochs}), found {start_epoch}..{end_epoch}"
                    ));
                }
                if *every_steps == 0 {
                    return Err(format!("{path}.every_steps must be at least 1"));
                }
                Ok(())
            }
        }
    }

    /// Expands the schedule after `dense_epochs` of dense training.
    pub fn plan(&self, dense_epochs: usize) -> Plan {
        let dense = Phase { round: 0, epochs: dense_epochs, start: vec![], sparsity: 0.0 };
        match *self {
            ScheduleConfig::OneShot { sparsity, finetune_epochs } => Plan {
                phases: vec![
                    dense,
                    Phase { round: 1, epochs: finetune_epochs, start: vec![Action::Prune { sparsity }], sparsity },
                ],
                rewind_point: None,
                gradual: None,
            },
            ScheduleConfig::Imp { rate, rounds, target_sparsity, epochs_per_round, rewind, reset_optimizer } => {
                let n = match (rounds, target_sparsity) {
                    (Some(r), _) => r,
                    (None, Some(t)) => ((1.0 - t).ln() / (1.0 - rate).ln() - 1e-9).ceil().max(1.0) as usize,
                    (None, None) => 1,
                };
                let mut phases = vec![dense];
                for r in 1..=n {
                    let mut s = 1.0 - (1.0 - rate).powi(r as i32);
                    if let Some(t) = target_sparsity {
                        s = s.min(t);
                    }
                    let mut start = vec![Action::Prune { sparsity: s }];
                    if rewind != Rewind::None {
                        start.push(Action::Rewind);
                    }
                    if reset_optimizer {
                        start.push(Action::ResetOptimizer);
                    }
                    phases.push(Phase { round: r, epochs: epochs_per_round, start, sparsity: s });
                }
                Plan { phases, rewind_point: rewind.epoch(), gradual: None }
            }
            ScheduleConfig::Gradual { final_sparsity, initial_sparsity, start_epoch, end_epoch, every_steps } => Plan {
                phases: vec![Phase { sparsity: final_sparsity, ..dense }],
                rewind_point: None,
                gradual: Some(Cubic {
                    initial: initial_sparsity,
                    last: final_sparsity,
                    start_epoch,
                    end_epoch,
                    every: every_steps,
                }),
            },
        }
    }
}

impl Plan {
    /// A plan of dense training only.
    pub fn dense(epochs: usize) -> Self {
        Plan {
            phases: vec![Phase { round: 0, epochs, start: vec![], sparsity: 0.0 }],
            rewind_point: None,
            gradual: None,
        }
    }

    /// Epochs over all phases.
    pub fn total_epochs(&self) -> usize {
        self.phases.iter().map(|p| p.epochs).sum()
    }

    /// (phase index, epoch within the phase) of a global epoch.
    pub fn locate(&self, epoch: usize) -> Option<(usize, usize)> {
        let mut e = epoch;
        for (i, p) in self.phases.iter().enumerate() {
            if e < p.epochs {
                return Some((i, e));
            }
            e -= p.epochs;
        }
        None
    }

    /// Actions of phases that have no epochs and start before `epoch`
    /// included, then the actions opening `epoch` itself: everything the
    /// loop must do before training epoch `epoch` (or, with
    /// `epoch == total_epochs()`, before finishing).
    pub fn actions_before(&self, epoch: usize) -> Vec<Action> {
        let mut out = Vec::new();
        if self.rewind_point == Some(epoch) {
            out.push(Action::SaveRewindPoint);
        }
        let mut start = 0;
        for p in &self.phases {
            if start == epoch {
                out.extend(p.start.iter().cloned());
            }
            start += p.epochs;
            if start > epoch {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imp_rounds_reach_target() {
        let c = ScheduleConfig::Imp {
            rate: 0.2,
            rounds: None,
            target_sparsity: Some(0.9),
            epochs_per_round: 2,
            rewind: Rewind::Init,
            reset_optimizer: true,
        };
        c.validate("prune.schedule", 3).unwrap();
        let p = c.plan(3);
        assert_eq!(p.phases.len(), 12); // 0.8^10 = 0.107 > 0.1, so 11 rounds
        assert!((p.phases.last().unwrap().sparsity - 0.9).abs() < 1e-12);
        assert!((p.phases[1].sparsity - 0.2).abs() < 1e-12);
        assert!((p.phases[2].sparsity - 0.36).abs() < 1e-12);
        assert_eq!(p.total_epochs(), 3 + 22);
        assert_eq!(p.actions_before(0), vec![Action::SaveRewindPoint]);
        assert_eq!(p.actions_before(1), vec![]);
        assert_eq!(
            p.actions_before(3),
            vec![Action::Prune { sparsity: 1.0 - 0.8 }, Action::Rewind, Action::ResetOptimizer]
        );
        assert_eq!(p.locate(4), Some((1, 1)));
    }

    #[test]
    fn one_shot_without_finetune_prunes_at_the_end() {
        let p = ScheduleConfig::OneShot { sparsity: 0.5, finetune_epochs: 0 }.plan(2);
        assert_eq!(p.actions_before(2), vec![Action::Prune { sparsity: 0.5 }]);
        assert_eq!(p.total_epochs(), 2);
    }

    #[test]
    fn cubic_reaches_final_sparsity() {
        let c = Cubic { initial: 0.0, last: 0.9, start_epoch: 1, end_epoch: 3, every: 5 };
        assert_eq!(c.target(0, 4, 10), None);
        let first = c.target(1, 4, 10).unwrap();
        assert!(first > 0.0 && first < 0.9);
        assert!((c.target(2, 9, 10).unwrap() - 0.9).abs() < 1e-12);
        assert_eq!(c.target(3, 0, 10), None);
    }

    #[test]
    fn invalid_values_are_named() {
        let e =
            ScheduleConfig::OneShot { sparsity: 1.5, finetune_epochs: 0 }.validate("prune.schedule", 1).unwrap_err();
        assert!(e.contains("prune.schedule.sparsity") && e.contains("1.5"), "{e}");
        assert!(Rewind::parse("epoch:x").is_err());
        assert_eq!(Rewind::parse("epoch:2"), Ok(Rewind::Epoch(2)));
    }
}
