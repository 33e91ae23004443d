//! Experiments: the config ([`Experiment`], TOML → validated, before any
//! tensor is allocated), the run directory ([`RunDir`]: atomic writes,
//! checkpoints, resume) and the [`Session`] that runs every phase of the
//! experiment's pruning method through one epoch loop, then writes
//! `model.safetensors`, `summary.json`, `report.md` and `results.csv`.
//!
//! The session asks the method ([`espalier_prune::Method`]) for its plan,
//! carries out the actions that open each phase, hooks the method into the
//! training step, and builds the reports from what the method says about
//! itself; it never names a method.

pub mod config;
pub mod error;
pub mod model;
pub mod plot;
pub mod record;
pub mod report;
pub mod rundir;
pub mod session;
pub mod status;

pub use config::{ConfigError, Experiment};
pub use error::{Error, Result};
pub use record::{BestEpoch, LineStats, Record};
pub use report::{report_markdown, results_csv, rounds_table, StructuredReport, Summary};
pub use rundir::RunDir;
pub use session::{eval_run, run, RunOptions, Session};
pub use status::{Failure, RunState};
