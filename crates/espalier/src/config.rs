//! Experiment configs (the experiment crate's, re-exported for the CLI and
//! `table`).

pub use espalier_experiment::config::*;
