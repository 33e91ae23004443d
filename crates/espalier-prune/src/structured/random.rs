//! Uniform random unit scores: the floor every criterion must clear.

use espalier_core::Result;

use super::{top_k, Criterion, SetView};

/// Random scores from the run's seeded stream.
pub struct Random;

impl Criterion for Random {
    fn needs_calibration(&self) -> bool {
        false
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        Ok(top_k(&(0..view.set.size).map(|_| view.rng.uniform()).collect::<Vec<_>>(), k))
    }
}
