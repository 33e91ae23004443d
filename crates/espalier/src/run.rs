//! Running experiments (the experiment crate's session, re-exported for the
//! CLI, `table` and `bench`).

pub use espalier_experiment::record::{BestEpoch, LineStats, Record};
pub use espalier_experiment::report::{report_markdown, results_csv, rounds_table, StructuredReport, Summary};
pub use espalier_experiment::session::{eval_run, run, RunOptions, Session};
pub use espalier_models::{load_model, model_name};
