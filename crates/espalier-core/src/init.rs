//! Parameter initialisers, drawn from the project's seeded [`Rng`].
//!
//! `KaimingUniform { fan_in }` is PyTorch's default for `nn.Linear` and
//! `nn.Conv2d` (`kaiming_uniform_(a = √5)`, i.e. U(−1/√fan_in, 1/√fan_in)), so
//! a freshly built Espalier MLP starts from the distribution a PyTorch user
//! expects. `KaimingNormal { fan_out }` is He et al. (2015) eq. 14 in fan-out
//! mode, the ResNet convention.

use crate::Rng;

/// How a parameter's initial values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element equals the constant.
    Const(f64),
    /// U(lo, hi).
    Uniform { lo: f64, hi: f64 },
    /// N(0, std²).
    Normal { std: f64 },
    /// U(−1/√fan_in, 1/√fan_in) (PyTorch's default for Linear/Conv).
    KaimingUniform { fan_in: usize },
    /// N(0, 2/fan_out) (He et al. 2015, fan-out mode).
    KaimingNormal { fan_out: usize },
}

impl Init {
    /// `n` values drawn from this initialiser.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Vec<f32> {
        match *self {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, hi } => (0..n).map(|_| rng.uniform_range(lo, hi) as f32).collect(),
            Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            Init::KaimingUniform { fan_in } => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                (0..n).map(|_| rng.uniform_range(-b, b) as f32).collect()
            }
            Init::KaimingNormal { fan_out } => {
                let std = (2.0 / fan_out.max(1) as f64).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
        }
    }
}
