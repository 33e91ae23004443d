//! Pruning schedules: when to prune, rewind and reset the optimizer.
//!
//! A [`ScheduleConfig`] expands into a [`Plan`]: a list of training phases
//! (round 0 is the dense training; round r ≥ 1 retrains after the r-th
//! pruning) with the [`Action`]s that open each phase. The plan is a pure
//! function of the config, so a resumed run recomputes it and continues at
//! the next epoch.
//!
//! - One-shot: train, prune once to the target, fine-tune.
//! - IMP (Han, Pool, Tran & Dally 2015, arXiv 1506.02626; Frankle & Carbin,
//!   "The Lottery Ticket Hypothesis", ICLR 2019, arXiv 1803.03635): each
//!   round prunes a fraction `rate` of the *remaining* weights, so after r
//!   rounds the sparsity is 1 − (1 − rate)^r (0.2 typical; 0.1 for BERT, as
//!   in Chen et al., "The Lottery Ticket Hypothesis for Pre-trained BERT
//!   Networks", NeurIPS 2020, arXiv 2007.12223); optional rewind of the
//!   survivors to their initial values (for a fine-tuned model loaded with
//!   `init_from`, the fine-tuned weights) or to the weights after epoch k
//!   (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the
//!   Lottery Ticket Hypothesis", ICML 2020, arXiv 1912.05671).
//! - Gradual (Zhu & Gupta, "To prune, or not to prune", 2017, arXiv
//!   1710.01878, eq. 1; the schedule of movement pruning): the cubic
//!   s_t = s_f + (s_0 − s_f)(1 − (t − t_0)/(n·Δt))³, applied every Δt steps
//!   between `start_epoch` and `end_epoch` of the dense phase.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::method::{Action, Length, Phase, Plan};

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
        /// Fresh optimizer state for the fine-tuning (default false: the
        /// dense phase's moments carry on).
        #[serde(default)]
        reset_optimizer: bool,
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
        let dense = Phase::new(0, Length::Epochs(dense_epochs), vec![]);
        match *self {
            ScheduleConfig::OneShot { sparsity, finetune_epochs, reset_optimizer } => {
                let mut start = vec![Action::Prune { sparsity }];
                if reset_optimizer {
                    start.push(Action::ResetOptimizer);
                }
                Plan { phases: vec![dense, Phase::new(1, Length::Epochs(finetune_epochs), start)], rewind_point: None }
            }
            ScheduleConfig::Imp { rate, epochs_per_round, rewind, reset_optimizer, .. } => {
                let mut phases = vec![dense];
                for (r, s) in self.round_sparsities(rate).into_iter().enumerate() {
                    let mut start = vec![Action::Prune { sparsity: s }];
                    if rewind != Rewind::None {
                        start.push(Action::Rewind);
                    }
                    if reset_optimizer {
                        start.push(Action::ResetOptimizer);
                    }
                    phases.push(Phase::new(r + 1, Length::Epochs(epochs_per_round), start));
                }
                Plan { phases, rewind_point: rewind.epoch() }
            }
            ScheduleConfig::Gradual { .. } => Plan { phases: vec![dense], rewind_point: None },
        }
    }

    /// IMP: the sparsity after each round.
    fn round_sparsities(&self, rate: f64) -> Vec<f64> {
        let ScheduleConfig::Imp { rounds, target_sparsity, .. } = *self else { return vec![] };
        let n = match (rounds, target_sparsity) {
            (Some(r), _) => r,
            (None, Some(t)) => ((1.0 - t).ln() / (1.0 - rate).ln() - 1e-9).ceil().max(1.0) as usize,
            (None, None) => 1,
        };
        (1..=n)
            .map(|r| {
                let s = 1.0 - (1.0 - rate).powi(r as i32);
                target_sparsity.map_or(s, |t| s.min(t))
            })
            .collect()
    }

    /// The cubic schedule of a gradual plan.
    pub fn gradual(&self) -> Option<Cubic> {
        match *self {
            ScheduleConfig::Gradual { final_sparsity, initial_sparsity, start_epoch, end_epoch, every_steps } => {
                Some(Cubic {
                    initial: initial_sparsity,
                    last: final_sparsity,
                    start_epoch,
                    end_epoch,
                    every: every_steps,
                })
            }
            _ => None,
        }
    }

    /// The sparsity a one-shot schedule prunes to (0 for the others).
    pub fn one_shot_sparsity(&self) -> f64 {
        match *self {
            ScheduleConfig::OneShot { sparsity, .. } => sparsity,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparsities(p: &Plan) -> Vec<f64> {
        p.phases
            .iter()
            .flat_map(|ph| ph.start.iter())
            .filter_map(|a| match a {
                Action::Prune { sparsity } => Some(*sparsity),
                _ => None,
            })
            .collect()
    }

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
        let s = sparsities(&p);
        assert!((s.last().unwrap() - 0.9).abs() < 1e-12);
        assert!((s[0] - 0.2).abs() < 1e-12);
        assert!((s[1] - 0.36).abs() < 1e-12);
        assert_eq!(p.phases.iter().map(|ph| ph.length.max_epochs()).sum::<usize>(), 3 + 22);
        assert_eq!(p.rewind_point, Some(0));
        assert_eq!(p.phases[0].start, vec![]);
        assert_eq!(
            p.phases[1].start,
            vec![Action::Prune { sparsity: 1.0 - 0.8 }, Action::Rewind, Action::ResetOptimizer]
        );
        assert_eq!(p.phases[1].round, 1);
    }

    /// BERT's convention from a fine-tuned model (no dense epochs): 10% per
    /// round to 90% takes 22 rounds, each rewinding to the run's starting
    /// (fine-tuned) weights, saved before the first round.
    #[test]
    fn bert_imp_at_ten_percent_with_rewind_from_a_fine_tuned_model() {
        let c = ScheduleConfig::Imp {
            rate: 0.1,
            rounds: None,
            target_sparsity: Some(0.9),
            epochs_per_round: 1,
            rewind: Rewind::Init,
            reset_optimizer: true,
        };
        c.validate("prune.schedule", 0).unwrap();
        let p = c.plan(0);
        let s = sparsities(&p);
        assert_eq!(s.len(), 22);
        assert!((s[0] - 0.1).abs() < 1e-12 && (s[1] - 0.19).abs() < 1e-12 && (s[21] - 0.9).abs() < 1e-12);
        assert_eq!(p.rewind_point, Some(0));
        assert!(p.phases[1..].iter().all(|ph| ph.start.contains(&Action::Rewind)));
    }

    #[test]
    fn one_shot_without_finetune_prunes_at_the_end() {
        let p = ScheduleConfig::OneShot { sparsity: 0.5, finetune_epochs: 0, reset_optimizer: false }.plan(2);
        assert_eq!(p.phases[1].start, vec![Action::Prune { sparsity: 0.5 }]);
        assert_eq!(p.phases[1].length, Length::Epochs(0));
        let p = ScheduleConfig::OneShot { sparsity: 0.5, finetune_epochs: 3, reset_optimizer: true }.plan(2);
        assert_eq!(p.phases[1].start, vec![Action::Prune { sparsity: 0.5 }, Action::ResetOptimizer]);
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
        let e = ScheduleConfig::OneShot { sparsity: 1.5, finetune_epochs: 0, reset_optimizer: false }
            .validate("prune.schedule", 1)
            .unwrap_err();
        assert!(e.contains("prune.schedule.sparsity") && e.contains("1.5"), "{e}");
        assert!(Rewind::parse("epoch:x").is_err());
        assert_eq!(Rewind::parse("epoch:2"), Ok(Rewind::Epoch(2)));
    }
}
