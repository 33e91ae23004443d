//! Pruning: importance scores, mask computation and schedules.
//!
//! Structure, importance and schedule are kept apart: an [`Importance`]
//! scores weights, [`masks_for`] turns scores into masks at a target
//! sparsity (globally or per layer), and a [`Plan`] (built from a
//! [`ScheduleConfig`]) says when to prune, rewind and reset the optimizer; the
//! run loop carries those actions out.

pub mod greg;
pub mod magnitude;
pub mod schedule;
pub mod structured;

pub use magnitude::{masks_for, Importance, Scope};
pub use schedule::{Action, Phase, Plan, Rewind, ScheduleConfig};
pub use structured::{GroupCriterion, MiEstimator, Selection, StructuredConfig};
