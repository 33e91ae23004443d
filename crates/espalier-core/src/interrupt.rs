//! A stop requested from outside (SIGINT/SIGTERM in the binary): the
//! training loop finishes the step it is in, the run writes a checkpoint
//! that holds that exact point (mid-epoch included) and stops; running the
//! same command again resumes there and ends with the numbers of an
//! uninterrupted run.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the running training to stop after its current step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
