//! The training loop (the only one in Espalier), its optimizers, learning
//! rate schedules, gradient clipping, pluggable [`Regularizer`]s and
//! evaluation.
//!
//! One step, in this order: forward → loss (+ penalties) → backward →
//! observers (statistics of the task gradient) → regularizer gradient
//! adjustments → gradient clipping → optimizer step → re-apply masks → step
//! hooks. The pruning method plugs into every slot as one more
//! [`Regularizer`], after the config's own.

pub mod lr;
pub mod optim;
pub mod regularize;
pub mod trainer;

pub use lr::{LrRestart, LrSchedule};
pub use optim::{Optimizer, OptimizerConfig};
pub use regularize::{Regularizer, RegularizerConfig, StepInfo};
pub use trainer::{evaluate, evaluate_groups, EpochStats, EvalStats, Trainer, TrainerOptions};
