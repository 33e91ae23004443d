//! Pruning: importance scores, mask computation and schedules.
//!
//! Structure, importance and schedule are kept apart: an [`Importance`]
//! scores weights, [`masks_for`] turns scores into masks at a target
//! sparsity (globally or per layer), and a [`Plan`] (built from a
//! [`ScheduleConfig`]) says when to prune, rewind and reset the optimizer; the
//! run loop carries those actions out. A [`Granularity`] says what is pruned
//! together (single weights, N:M patterns, blocks).
//!
//! Methods that shape the weights while training are regularizers in the
//! training loop's slot: [`MovementTracker`] (movement scores), [`Admm`] and
//! [`SrSte`] (pattern pruning), GReg ([`greg`]); SPUR's row/column group
//! lasso is `espalier_train`'s `group_lasso`.

pub mod admm;
pub mod greg;
pub mod magnitude;
pub mod movement;
pub mod pattern;
pub mod schedule;
pub mod structured;

pub use admm::{Admm, AdmmConfig, Projection, SrSte, SrSteConfig};
pub use magnitude::{masks_for, Importance, MaskRule, MovementScores, Scope};
pub use movement::MovementTracker;
pub use pattern::Granularity;
pub use schedule::{Action, Phase, Plan, Rewind, ScheduleConfig};
pub use structured::{GroupCriterion, MiEstimator, Selection, StructuredConfig};
