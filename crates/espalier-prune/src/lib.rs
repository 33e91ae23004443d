//! Pruning methods, each one module behind the [`Method`] trait.
//!
//! A method owns its config and its validation, what it adds to training
//! (it is the step loop's [`espalier_train::Regularizer`] hook: observe,
//! penalty, gradient adjustment, step and epoch updates), its phase logic
//! (the [`Plan`] of phases and the [`Action`]s that open them), its masks or
//! unit selection, and its report section. The experiment session carries
//! out the plan and never names a method.
//!
//! - [`unstructured`]: masks on a [`schedule`] (one-shot, IMP with rewinding,
//!   gradual) from an importance criterion ([`magnitude`], random,
//!   [`movement`]) at a [`pattern`] granularity, with [`admm`] and
//!   [`sr_ste`] as its training terms and SPUR as IMP with a group lasso;
//! - [`structured`]: one-pass unit criteria (random, l1, l2, activation,
//!   taylor, movement, i-SpaSP, MI), a physical shrink and fine-tuning;
//! - [`greg`]: GReg-1/2, units chosen and pushed to zero by a growing penalty.
//!
//! Structure, importance and schedule are kept apart (SparseML's modifiers,
//! Torch-Pruning's pruner / importance / scheduler split), so any criterion
//! works with any granularity and schedule.

pub mod admm;
pub mod greg;
pub mod magnitude;
pub mod method;
pub mod movement;
pub mod pattern;
pub mod schedule;
pub mod sr_ste;
pub mod structured;
pub mod unstructured;
pub mod wanda;

pub use admm::{Admm, AdmmConfig, AdmmLr, AdmmPenalty, AdmmPoint, Projection};
pub use magnitude::{masks_for, Importance, MaskRule, Scope, Scorer};
pub use method::{Action, Context, Curve, Dense, Length, Method, MethodReport, Phase, PhaseLr, Plan, Selection};
pub use pattern::{Granularity, LayerTargets};
pub use schedule::{Rewind, ScheduleConfig};
pub use sr_ste::{DecayForm, SrSte, SrSteConfig};
pub use structured::{GroupCriterion, MiEstimator, StructuredConfig};
pub use unstructured::PruneConfig;
