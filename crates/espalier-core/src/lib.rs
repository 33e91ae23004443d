//! Espalier's foundation: named parameters with masks, name selectors, the
//! project's seeded RNG, checkpoint I/O, the [`Batch`] models consume and
//! the error type shared by the library crates.
//!
//! Everything in Espalier addresses parameters by dotted names
//! (`fc1.weight`, `encoder.layer.3.attention.self.query.weight`): the
//! [`ParamStore`] keys, mask keys, checkpoint keys and [`Selector`] patterns all
//! use the same strings.

pub mod batch;
pub mod checkpoint;
pub mod compact;
pub mod error;
pub mod fuzz;
pub mod groups;
pub mod init;
pub mod interrupt;
pub mod mask;
pub mod metrics;
pub mod params;
pub mod rng;
pub mod select;
pub mod simd;

pub use batch::{Batch, Inputs};
pub use error::{Error, Result};
pub use groups::{GroupSet, Keep, Member};
pub use mask::{LayerSparsity, SparsityReport};
pub use metrics::Metric;
pub use params::{Param, ParamBuilder, ParamKind, ParamStore};
pub use rng::Rng;
pub use select::Selector;
