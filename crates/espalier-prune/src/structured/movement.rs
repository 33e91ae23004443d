//! Movement pruning's score for units (Sanh, Wolf & Rush, "Movement
//! Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020, arXiv
//! 2005.07683, §3: `S = −Σ_t ∂L/∂W⁽ᵗ⁾ ⊙ W⁽ᵗ⁾`) summed over a unit,
//! `−Σ_{w ∈ unit} w·∂L/∂w`, with the sum over training steps replaced by the
//! calibration batches at the fine-tuned weights: signed, so a unit whose
//! removal would lower the loss (to first order) ranks last, where Taylor's
//! square ranks it by size.

use super::taylor::FirstOrder;

/// The signed movement score of units: `−Σ_{w ∈ unit} w·∂L/∂w`.
pub fn unit_movement() -> FirstOrder {
    FirstOrder::new(|s| -s)
}
