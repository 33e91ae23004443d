//! The `espalier` command: experiment config → validated plan → run
//! directory with metrics, checkpoints and a report.

pub mod bench;
pub mod config;
pub mod export;
pub use espalier_experiment::plot;
pub mod predict;
pub mod run;
pub mod table;
